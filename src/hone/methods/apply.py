"""Apply an adaptation method to a loaded base model and report what will train."""
from __future__ import annotations

from dataclasses import dataclass

from hone.config import MethodSection


@dataclass
class ParameterCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100 * self.trainable / max(1, self.total)
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({share:.2f}%)"


def count_parameters(model) -> ParameterCount:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCount(trainable, sum(p.numel() for p in model.parameters()))


def peft_task_type(model) -> str:
    """peft's task type for a model: it picks the wrapper, and for classifiers it trains and saves the new head."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return "CAUSAL_LM"


def lora(model, cfg: MethodSection):
    """LoRA adapters through peft on the chosen linear layers; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    task = peft_task_type(model)
    # A new classification head trains whole (peft's modules_to_save); peft 0.21 would otherwise put
    # LoRA on a token classifier's head first and then refuse to make it trainable.
    extra = {"exclude_modules": ["classifier", "score"]} if task != "CAUSAL_LM" else {}
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type=task, **extra)
    return get_peft_model(model, config)


def full(model, cfg: MethodSection):
    """Every parameter trains."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


METHODS = {"lora": lora, "full": full}


def apply_method(model, cfg: MethodSection):
    """The model ready to train with `cfg.name`."""
    return METHODS[cfg.name](model, cfg)
