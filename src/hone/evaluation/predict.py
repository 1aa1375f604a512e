"""Answer chat messages with any finished run (or a base model): generated text, or a classifier's label.

A classifier trained from chat data answers with the label text, so `hone generate`, `hone chat`,
`hone eval` and the server treat it like a generative model:

    predictor = Predictor("latest")                   # a run folder, run id, NAME:VERSION, or a model
    predictor.answer([{"role": "user", "content": "Where is my parcel?"}])   # -> "shipping"
    answer("latest", messages)                        # the same, loading the model for one call
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from hone.config import load_config
from hone.data.formats import check_messages, read_jsonl
from hone.data.records import ChatExample
from hone.data.render import classifier_text
from hone.errors import UserError
from hone.evaluation.generate import generate_batch, stream_answer
from hone.methods.artifact import load_run_model
from hone.methods.heads import load_head_run, predict
from hone.models.load import load_causal_lm, load_tokenizer
from hone.registry.runs import find_run, read_record


class Predictor:
    """A loaded run or model that answers conversations; `kind` is "classifier" or "generator"."""

    def __init__(self, ref: str | Path, device: str = "cpu"):
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
            assert run is not None  # a head is recorded by a run
            self.model, self.tokenizer, _ = load_head_run(run, device)
            self.max_length = _run_max_length(run, self.model)
        elif run is not None:
            self.model, self.tokenizer = load_run_model(run, device)
        else:
            self.model, self.tokenizer = load_causal_lm(str(ref), device), load_tokenizer(str(ref))

    @property
    def system_prompt(self) -> str | None:
        """The system message the run was trained with, for prompts that bring none."""
        return self.record.get("system_prompt")

    def answers(self, conversations: list[list[dict]], max_new_tokens: int = 256, batch_size: int = 16) -> list[str]:
        """One answer per conversation (each ends with the user's turn)."""
        if self.kind == "generator":
            return generate_batch(self.model, self.tokenizer, conversations, max_new_tokens, batch_size)
        if self.record.get("prompt_format") == "chat":
            texts = [classifier_text(self.tokenizer, c) for c in conversations]
        else:  # trained on plain text: the user's last message is the text
            texts = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations]
        return predict(self.model, self.tokenizer, texts, self.max_length, batch_size)

    def answer(self, messages: list[dict], max_new_tokens: int = 256) -> str:
        return self.answers([messages], max_new_tokens)[0]

    def chat(self, messages: list[dict], max_new_tokens: int = 512, temperature: float = 0.0) -> str:
        """The reply to a conversation (system prompt of the training data added when it has none)."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return "".join(self.stream(messages, max_new_tokens, temperature))

    def ask(self, messages: list[dict], kb, k: int = 4, max_new_tokens: int = 256) -> tuple[str, list]:
        """(answer, passages) for a conversation answered with the `k` passages `kb` (a hone.kb.KnowledgeBase)
        finds for its last user turn; the passages' ids are the answer's citations."""
        from hone.kb.prompt import retrieve_for

        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        prompt, passages = retrieve_for(kb, messages, k)
        return self.answer(prompt, max_new_tokens), passages

    def stream(self, messages: list[dict], max_new_tokens: int = 512, temperature: float = 0.0) -> Iterator[str]:
        """The reply piece by piece as it is generated (a classifier's label in one piece)."""
        if self.kind == "classifier":
            yield self.answer(messages)
            return
        yield from stream_answer(self.model, self.tokenizer, messages, max_new_tokens, temperature)


def read_prompts(prompt: str | None, file: Path | None, system: str | None = None) -> list[list[dict]]:
    """The conversations to answer: one `prompt`, or each line of a JSONL `file` (chat records, whose
    last assistant turn is left out, or {"prompt": ...}); `system` heads those that bring no system message."""
    head = [{"role": "system", "content": system}] if system else []  # for prompts that bring none
    if prompt is not None:
        return [head + [{"role": "user", "content": prompt}]]
    if file is None:
        raise UserError("give --prompt TEXT or --file prompts.jsonl")
    conversations = []
    for line, record in read_jsonl(file):
        if "messages" in record:
            example = ChatExample(record["messages"])
            if any(m.get("role") == "assistant" for m in record["messages"]):
                check_messages(record, str(file), line)
            asked = example.prompt_messages
            conversations.append(asked if asked and asked[0]["role"] == "system" else head + asked)
        elif isinstance(record.get("prompt"), str):
            conversations.append(head + [{"role": "user", "content": record["prompt"]}])
        else:
            raise UserError("expected `messages` or `prompt` in each line", file=str(file), line=line)
    return conversations


def chat_loop(predictor: Predictor, read: Callable[[], str | None], write: Callable[[str], None],
              system: str | None = None, max_new_tokens: int = 512, temperature: float = 0.0,
              kb=None, k: int = 4) -> list[dict]:
    """Converse until `read` returns None or an empty line: each reply is streamed through `write`.
    With `kb` (a hone.kb.KnowledgeBase) each question is asked with the passages it retrieves (the history
    keeps the plain question) and the reply ends with a `sources:` line of their ids.
    Returns the conversation. `hone chat` reads the terminal; a test or a notebook passes its own."""
    from hone.kb.prompt import retrieve_for

    messages = [{"role": "system", "content": system}] if system else []
    while (text := (read() or "").strip()):
        messages.append({"role": "user", "content": text})
        asked, passages = retrieve_for(kb, messages, k) if kb is not None else (messages, [])
        write("model> ")
        parts = []
        for piece in predictor.stream(asked, max_new_tokens, temperature):
            parts.append(piece)
            write(piece)
        write("\n")
        if passages:
            write("sources: " + " ".join(f"[{p.id}]" for p in passages) + "\n")
        messages.append({"role": "assistant", "content": "".join(parts)})
    return messages


def answer(run_or_model: str | Path, messages: list[dict], max_new_tokens: int = 256) -> str:
    """The answer of a run (generative or classifier) or a model to one conversation; loads it each call."""
    return Predictor(run_or_model).answer(messages, max_new_tokens)


def _run_max_length(run: Path, model) -> int:
    config_file = Path(run) / "config.yaml"
    configured = load_config(config_file).data.max_length if config_file.is_file() else 1024
    limit = getattr(model.config, "max_position_embeddings", None) or configured
    return min(configured, limit)


def teacher_for(teacher: str = "local", model: str | None = None, device: str = "cpu", max_new_tokens: int = 384):
    """(answer function, name) for `hone data synth`: "local" answers with `model` (a run or a model; default
    the catalogue's default) on this machine; a URL is any OpenAI-compatible endpoint, asked for `model`."""
    from hone.kb.synth import openai_teacher
    from hone.models.catalogue import DEFAULT_MODEL

    if teacher != "local":
        if not teacher.startswith(("http://", "https://")):
            raise UserError(f"--teacher {teacher!r}: give 'local' or the URL of an OpenAI-compatible endpoint "
                            "(e.g. http://localhost:8000/v1)")
        return openai_teacher(teacher, model or "default"), f"{teacher} ({model or 'default'})"
    predictor = Predictor(model or DEFAULT_MODEL, device)
    if predictor.kind == "classifier":
        raise UserError("--teacher-model: a classifier cannot write questions and answers; use a generative model")
    return (lambda conversations: predictor.answers(conversations, max_new_tokens, batch_size=8),
            f"local {model or DEFAULT_MODEL}")
