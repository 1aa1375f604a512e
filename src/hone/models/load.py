"""Load a base model and its tokenizer from whatever `resolve_model` found."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from hone.models.catalogue import ResolvedModel, resolve_model

# hone draws its own progress; transformers' per-shard bars would only add noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_transformers() -> None:
    import warnings

    import transformers

    # peft asks transformers a deprecated question on every wrap; the user can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model: ResolvedModel | str):
    from transformers import AutoTokenizer

    quiet_transformers()
    resolved = resolve_model(model) if isinstance(model, str) else model
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: ResolvedModel | str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   attention: str | None = None):
    """A causal LM in eval mode on `device`; `attention` picks the kernel (eager, sdpa)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    resolved = resolve_model(model) if isinstance(model, str) else model
    extra = {"attn_implementation": attention} if attention else {}
    lm = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype, **extra)
    # transformers wraps PreTrainedModel.to in a decorator whose type takes the model as the first argument
    return lm.to(device).eval()  # type: ignore[arg-type]


def load_with_adapter(base: ResolvedModel | str, adapter_dir, device: str = "cpu", attention: str | None = None):
    """Base + a PEFT adapter, merged in fp32 into a fresh model for fast generation.

    Merged weights stay fp32: a bf16 cast loses most of a LoRA delta (max |dlogit| 2.4 measured).
    peft's merge_and_unload() result generated ~1.6x slower than the same weights in a fresh model,
    so the merged state is copied into one.
    """
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_causal_lm(base, device, attention=attention), str(adapter_dir))
    return merged_copy(model)


def merged_copy(peft_model):
    """A plain model holding `peft_model`'s merged weights (the adapter model is left untouched)."""
    import copy

    from transformers import AutoModelForCausalLM

    merged = copy.deepcopy(peft_model).merge_and_unload()
    fresh = AutoModelForCausalLM.from_config(merged.config, dtype=torch.float32)
    fresh.load_state_dict(merged.state_dict())
    fresh.generation_config = merged.generation_config
    device = next(merged.parameters()).device
    return fresh.to(device).eval()


def model_context(folder: Path) -> int | None:
    """The model's context length (max_position_embeddings in its config.json), if it says."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if isinstance(value, int) else None


def counting_tokenizer(model: str):
    """(tokenizer, context length) of a model, for counting the tokens of data before training."""
    resolved = resolve_model(model)
    return load_tokenizer(resolved), model_context(Path(resolved.path))
