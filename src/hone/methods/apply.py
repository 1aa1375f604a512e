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


def lora(model, cfg: MethodSection):
    """LoRA adapters through peft on the chosen linear layers; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM")
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
