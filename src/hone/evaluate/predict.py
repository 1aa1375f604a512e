"""Answer chat messages with any finished run (or a base model): generated text, or a classifier's label.

A classifier trained from chat data answers with the label text, so `hone generate`, `hone chat`,
`hone eval` and the server treat it like a generative model:

    predictor = Predictor("latest")                   # a run folder, run id, NAME:VERSION, or a model
    predictor.answer([{"role": "user", "content": "Where is my parcel?"}])   # -> "shipping"
    answer("latest", messages)                        # the same, loading the model for one call
"""
from __future__ import annotations

from pathlib import Path

from hone.errors import UserError


class Predictor:
    """A loaded run or model that answers conversations; `kind` is "classifier" or "generator"."""

    def __init__(self, ref: str | Path, device: str = "cpu"):
        from hone.registry.runs import find_run, read_record

        try:
            run = find_run(ref)
        except UserError:
            run = None
        self.run_dir, self.record = run, read_record(run) if run is not None else {}
        head = self.record.get("head")
        if head is not None and head != "sequence":
            raise UserError(f"{run} is a {self.record.get('objective')} run (a {head} head): it scores tokens or "
                            "answers, it does not answer prompts")
        self.kind = "classifier" if head == "sequence" else "generator"
        self.labels: list[str] = self.record.get("labels", [])
        if self.kind == "classifier":
            from hone.methods.heads import load_head_run

            self.model, self.tokenizer, _ = load_head_run(run, device)
            self.max_length = _run_max_length(run, self.model)
        elif run is not None:
            from hone.methods.artifact import load_run_model

            self.model, self.tokenizer = load_run_model(run, device)
        else:
            from hone.models.load import load_causal_lm, load_tokenizer

            self.model, self.tokenizer = load_causal_lm(str(ref), device), load_tokenizer(str(ref))

    @property
    def system_prompt(self) -> str | None:
        """The system message the run was trained with, for prompts that bring none."""
        return self.record.get("system_prompt")

    def answers(self, conversations: list[list[dict]], max_new_tokens: int = 256, batch_size: int = 16) -> list[str]:
        """One answer per conversation (each ends with the user's turn)."""
        if self.kind == "generator":
            from hone.evaluate.generate import generate_batch

            return generate_batch(self.model, self.tokenizer, conversations, max_new_tokens, batch_size)
        from hone.data.render import classifier_text
        from hone.methods.heads import predict

        if self.record.get("prompt_format") == "chat":
            texts = [classifier_text(self.tokenizer, c) for c in conversations]
        else:  # trained on plain text: the user's last message is the text
            texts = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations]
        return predict(self.model, self.tokenizer, texts, self.max_length, batch_size)

    def answer(self, messages: list[dict], max_new_tokens: int = 256) -> str:
        return self.answers([messages], max_new_tokens)[0]


def answer(run_or_model: str | Path, messages: list[dict], max_new_tokens: int = 256) -> str:
    """The answer of a run (generative or classifier) or a model to one conversation; loads it each call."""
    return Predictor(run_or_model).answer(messages, max_new_tokens)


def _run_max_length(run: Path, model) -> int:
    from hone.config import load_config

    configured = load_config(Path(run) / "config.yaml").data.max_length if (Path(run) / "config.yaml").is_file() else 1024
    limit = getattr(model.config, "max_position_embeddings", None) or configured
    return min(configured, limit)
