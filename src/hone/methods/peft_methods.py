"""Methods peft implements: lora, dora, qlora (LoRA on a quantized base), ia3, prompt and prefix tuning.

peft wraps the model; its `save_pretrained` writes the adapter in the format other tools load.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any

from torch import nn

from hone.config import MethodSection
from hone.errors import ConfigError
from hone.methods.structure import peft_task_type


def _targets(cfg: MethodSection):
    if cfg.target_modules == "all-linear":
        return "all-linear"
    return [t.strip() for t in cfg.target_modules.split(",") if t.strip()]


def _lora_config(model: nn.Module, cfg: MethodSection, use_dora: bool = False):
    from peft import LoraConfig

    task = peft_task_type(model)
    # A new classification head trains whole (peft's modules_to_save); peft 0.21 would otherwise put
    # LoRA on a token classifier's head first and then refuse to make it trainable.
    extra: dict[str, Any] = {"exclude_modules": ["classifier", "score"]} if task != "CAUSAL_LM" else {}
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=_targets(cfg), use_dora=use_dora, task_type=task, **extra)


@contextlib.contextmanager
def quiet_peft_warnings():
    """peft calls transformers' deprecated `is_gradient_checkpointing`; the FutureWarning is noise to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _wrap(model: nn.Module, config):
    from peft import get_peft_model

    try:
        with quiet_peft_warnings():
            return get_peft_model(model, config)
    except ValueError as exc:  # peft's message names the modules it could not find
        raise ConfigError(f"method.target_modules: {exc}", field="method.target_modules") from None


def lora(model: nn.Module, cfg: MethodSection):
    """LoRA (Hu et al. 2021): low-rank updates B·A beside the chosen linear layers; the base is frozen."""
    return _wrap(model, _lora_config(model, cfg))


def dora(model: nn.Module, cfg: MethodSection):
    """DoRA (Liu et al. 2024): LoRA on the direction of each weight plus a trained magnitude vector."""
    return _wrap(model, _lora_config(model, cfg, use_dora=True))


def qlora(model: nn.Module, cfg: MethodSection):
    """QLoRA (Dettmers et al. 2023): the frozen base in 4-bit NF4 (or int8), LoRA trained on top in fp32."""
    from hone.methods.quantized import is_quantized, quantize_base
    from hone.methods.structure import unwrap

    if not is_quantized(model):  # else quantized while loading (quantized.load_quantized)
        quantize_base(model, cfg.quantize)
    # peft then uses its bitsandbytes LoRA layer
    unwrap(model).is_loaded_in_4bit = cfg.quantize == "nf4"  # type: ignore[assignment]  # peft reads it; transformers does not declare it
    wrapped = _wrap(model, _lora_config(model, cfg))
    # TRL casts the trainable parameters of a model that says it is 4-bit to bf16 (the QLoRA paper's
    # recipe). hone keeps LoRA in fp32 (eager bf16 rounds early updates away, field notes §4), and a
    # classifier head in bf16 fails against fp32 activations: once wrapped, the flag has done its job.
    unwrap(wrapped).is_loaded_in_4bit = False  # type: ignore[assignment]  # peft reads it; transformers does not declare it
    return wrapped


def ia3(model: nn.Module, cfg: MethodSection):
    """IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the MLP's inner activations."""
    from peft import IA3Config

    extra = {}
    if cfg.target_modules != "all-linear":  # "all-linear" means peft's per-family default here
        targets = _targets(cfg)
        extra = {"target_modules": targets, "feedforward_modules": [t for t in targets if "down" in t or "fc2" in t]}
    try:
        config = IA3Config(task_type=peft_task_type(model), **extra)
        return _wrap(model, config)
    except ValueError as exc:
        raise ConfigError(f"ia3: {exc}; set method.target_modules to this model's key, value and "
                          "MLP output layers", field="method.target_modules") from None


def prompt_tuning(model: nn.Module, cfg: MethodSection):
    """Prompt tuning (Lester et al. 2021): learned embeddings of `num_virtual_tokens` prepended to the input."""
    from peft import PromptTuningConfig

    return _wrap(model, PromptTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens))


def prefix_tuning(model: nn.Module, cfg: MethodSection):
    """Prefix tuning (Li & Liang 2021): learned keys and values for `num_virtual_tokens` in every layer."""
    from peft import PrefixTuningConfig

    return _wrap(model, PrefixTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens))
