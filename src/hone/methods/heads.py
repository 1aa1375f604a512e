"""Models with a new task head: sequence classification, token classification, a scalar reward.

An encoder (MiniLM/BERT) or a decoder (Llama: LlamaForSequenceClassification scores the last
non-padding token) gets a randomly initialised linear head. The head always trains, whatever the
method: a frozen random head can only be wrong. With a peft method the head is one of peft's
`modules_to_save`, so the adapter folder carries it and `PeftModel.from_pretrained` restores it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hone.models.catalogue import ResolvedModel, resolve_model
from hone.models.load import load_tokenizer, quiet_transformers
from hone.registry.runs import read_record

HEAD_NAMES = ("classifier", "score")


def head_class(kind: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[kind]


def load_head_model(base: ResolvedModel | str, kind: str, labels: list[str], device: str = "cpu",
                    seed: int | None = None):
    """The base with a new head of len(labels) outputs (one output for a reward model: labels == []);
    `seed` seeds the new head's random initialisation, so a run is reproducible from its seed."""
    quiet_transformers()
    if seed is not None:
        torch.manual_seed(seed)
    resolved = resolve_model(base) if isinstance(base, str) else base
    names = labels or ["reward"]
    model = head_class(kind).from_pretrained(
        resolved.path, dtype=torch.float32, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if model.config.pad_token_id is None:
        # Decoders find the last real token of a padded row through the pad id.
        model.config.pad_token_id = load_tokenizer(resolved).pad_token_id
    return model.to(device)


def train_new_head(model) -> None:
    """Make the head trainable on a model that is not a peft model (peft's task types handle it there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, torch.nn.Module) and not hasattr(model, "peft_config"):
            for parameter in head.parameters():
                parameter.requires_grad_(True)


def load_head_run(run: Path, device: str = "cpu"):
    """(model, tokenizer, labels) of a finished classify, ner or reward run: the method's artifact
    (methods/artifact.py) put back onto a fresh base with a new head of the same shape."""
    from hone.errors import UserError
    from hone.methods.artifact import is_tuned_artifact, load_tuned

    run = Path(run)
    record = read_record(run)
    kind, labels = record.get("head"), record.get("labels", [])
    if kind is None:
        raise UserError(f"{run} is not a classify, ner or reward run (objective: {record.get('objective')})")
    for folder in (run / "adapter", run / "model"):
        if is_tuned_artifact(folder):
            if folder.name == "model":  # full fine-tuning saved the whole model, head included
                # B023: `build` runs below, in this iteration
                build = lambda: head_class(kind).from_pretrained(folder, dtype=torch.float32).to(device)  # noqa: E731, B023
            else:
                build = lambda: load_head_model(record["base_model"], kind, labels, device)  # noqa: E731
            quiet_transformers()
            model = load_tuned(record["base_model"], folder, device, build=build)
            return model.eval(), load_tokenizer(_folder(folder)), labels
    raise UserError(f"{run} has no trained model yet (status: {record.get('status', 'unknown')})")


def _folder(path: Path) -> ResolvedModel:
    return ResolvedModel(str(path), path, "unknown", "folder")


def max_tokens(tokenizer, model, configured: int) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or configured
    return min(configured, limit)


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> list[str]:
    """The predicted label name for each text."""
    model.eval()
    names = model.config.id2label
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        logits = model(**batch).logits
        out += [names[int(k)] for k in logits.argmax(-1)]
    return out


def has_lm_head(base: ResolvedModel) -> bool:
    """Does the base model come with a language-model head (a decoder), or is it an encoder?"""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base.path)
    return type(config) in AutoModelForCausalLM._model_mapping


def as_causal_lm(model, base: ResolvedModel, device: str = "cpu"):
    """The model's (tuned) backbone under the base's own language-model head: what a task head's
    training did to the model's general skills, for the forgetting probe. peft injects its layers into
    the backbone's modules, so the adapter stays active there; the task head is left out."""
    from hone.models.load import load_causal_lm

    lm = load_causal_lm(base, device)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(lm, lm.base_model_prefix, getattr(inner, inner.base_model_prefix))
    return lm.eval()
