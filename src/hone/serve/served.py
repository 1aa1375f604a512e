"""What a served model is, for every engine: a base (`BASE`) or a tuned folder over the base it was trained on,
and the tokenizers, context lengths and bases the router asks of each engine (`ModelTokenizers`).

The engines (hone.serve.engine: transformers; serve/engines/: llama.cpp and vLLM) all answer in the model's own
HF tokenizer's ids, so prompts, stop strings and usage counts are the same whichever engine generates.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from hone.errors import UserError
from hone.serve.generation import Job

BASE = None  # `tuned` of a ModelSource that is a base model


class InferenceEngine(Protocol):
    """What the inference router calls on an engine (serve/engines/table.py lists them)."""
    default_max_tokens: int

    def tokenizer(self, source): ...
    def encode(self, source, text: str) -> list[int]: ...
    def context_length(self, source) -> int | None: ...
    def submit(self, job: Job) -> None: ...
    def unload(self, source) -> None: ...
    def close(self) -> None: ...


def tuned_artifact(tuned: str | Path) -> Path:
    """The folder to load for a ModelSource's `tuned`: a run folder's adapter/ or model/, else itself."""
    from hone.methods.artifact import is_tuned_artifact

    path = Path(tuned)
    if not is_tuned_artifact(path):
        for sub in ("adapter", "model"):
            if is_tuned_artifact(path / sub):
                return path / sub
    return path


def trained_base(source) -> str:
    """The base `source`'s weights were trained on: the run record's when it names another model.

    A model tuned again on top of a tuned model trained on its parent's merged copy (`merged/`), while
    the catalog names the root base; the adapter only fits the base it was trained on."""
    import json

    from hone.models.catalogue import resolve_model

    record = Path(source.tuned) / "run.json"
    if not record.is_file():
        return source.base
    trained = json.loads(record.read_text(encoding="utf-8")).get("base_model")
    if not trained or trained == source.base:
        return source.base
    try:
        same = resolve_model(trained).path.resolve() == resolve_model(source.base).path.resolve()
    except UserError:
        return source.base
    return source.base if same else trained   # the same weights: keep the catalog's name, shared


def is_shared_adapter(folder: Path) -> bool:
    """LoRA and DoRA adapters load onto the shared base; anything else needs its own model."""
    import json

    from hone.methods.artifact import read_method

    info = read_method(folder)
    if info["saved"] != "peft" or info["method"] not in ("lora", "dora"):
        return False
    peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    return peft_type == "LORA"   # a bare peft folder reads as lora; prompt tuning & co. are not


class ModelTokenizers:
    """Tokenizers, context lengths and bases of served models: what the router asks every engine.

    Every engine answers in the model's own HF tokenizer's ids, so prompts, stop strings and usage
    counts are the same whichever engine generates."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, object] = {}
        self._contexts: dict[str, int | None] = {}
        self._kinds: dict = {}   # tuned folder -> its kind; ("base", tuned, base) -> the base it runs on
        self._encode_lock = threading.Lock()
        self._cache_lock = threading.RLock()   # tokenizers, contexts, kinds: quick, router threads take it

    def tokenizer(self, source):
        """The tokenizer `source` was trained with (its tuned folder's own, else its base's)."""
        from hone.models.load import load_tokenizer

        spec = self._base_spec(source)
        if source.tuned is not BASE:   # a model of its own may bring its tokenizer; adapters use the base's
            folder = tuned_artifact(source.tuned)
            if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
                spec = str(folder)
        with self._cache_lock:
            if spec not in self._tokenizers:
                self._tokenizers[spec] = load_tokenizer(spec)
            return self._tokenizers[spec]

    def encode(self, source, text: str) -> list[int]:
        """Token ids of `text` with `source`'s tokenizer. Serialised: a fast tokenizer encoding on two
        threads at once can fail with "Already borrowed" (its padding state is mutable)."""
        tokenizer = self.tokenizer(source)
        with self._encode_lock:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    def context_length(self, source) -> int | None:
        """How many tokens prompt + answer may hold (the model's position limit), None if unknown."""
        from transformers import AutoConfig

        from hone.models.catalogue import resolve_model

        folder = tuned_artifact(source.tuned) if source.tuned is not BASE else None
        spec = str(folder) if folder is not None and (folder / "config.json").is_file() else self._base_spec(source)
        with self._cache_lock:
            if spec not in self._contexts:
                config = AutoConfig.from_pretrained(resolve_model(spec).path)
                self._contexts[spec] = getattr(config, "max_position_embeddings", None)
            return self._contexts[spec]

    def _key(self, source) -> str:
        return str(tuned_artifact(source.tuned).resolve())

    def _base_spec(self, source) -> str:
        """The base model `source` runs on (see trained_base), worked out once per tuned folder."""
        if source.tuned is BASE:
            return source.base
        with self._cache_lock:
            key = ("base", source.tuned, source.base)
            if key not in self._kinds:
                self._kinds[key] = trained_base(source)
            return self._kinds[key]
