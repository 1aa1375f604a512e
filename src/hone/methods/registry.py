"""Every adaptation method behind one switch (`method.name`): what it trains, where it applies, how to apply it.

A method is a function `(model, MethodSection) -> model ready to train`, plus an optional `check`
that refuses a model it cannot work on. `check_method` runs before any work starts (on a weightless
"meta" copy of the model), so an impossible choice fails in one line, not after the base evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from hone.config import DEFAULT_LR, MethodSection
from hone.errors import ConfigError
from hone.methods import bottleneck, freeze as selective, peft_methods, probe as probing, quantized

# Objectives that train through a language-model head, and those that train a new task head.
LM_OBJECTIVES = frozenset({"sft", "pretrain", "dpo", "orpo", "simpo", "grpo", "mixture"})
HEAD_OBJECTIVES = frozenset({"classify", "ner", "reward"})
ALL_OBJECTIVES = LM_OBJECTIVES | HEAD_OBJECTIVES


@dataclass(frozen=True)
class Method:
    name: str
    trains: str                                   # what changes, in one line
    choose_when: str                              # when a user should pick it
    apply: Callable[[nn.Module, MethodSection], nn.Module]
    saves: str                                    # "peft", "tensors" or "model" (methods/artifact.py)
    objectives: frozenset = ALL_OBJECTIVES
    check: Optional[Callable[[nn.Module, MethodSection], None]] = None

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR[self.name]


_METHODS = [
    Method("full", "every weight", "enough memory and data, and the largest change is wanted",
           selective.full, "model"),
    Method("freeze", "the top N blocks (or parameters matching patterns)",
           "a cheap full-precision change of the last layers; no extra modules at inference",
           selective.freeze, "tensors", check=selective.check_freeze),
    Method("lora", "low-rank updates beside linear layers", "the default: small, fast, mergeable",
           peft_methods.lora, "peft"),
    Method("dora", "LoRA on weight directions + magnitudes", "LoRA quality at low rank, at some speed cost",
           peft_methods.dora, "peft"),
    Method("qlora", "LoRA on a 4-bit NF4 (or int8) frozen base", "the base does not fit in memory otherwise",
           peft_methods.qlora, "peft", check=quantized.check_quantized),
    Method("adapters", "a bottleneck MLP after each block's MLP", "several tasks over one frozen base; "
           "not mergeable", bottleneck.adapters, "tensors", check=bottleneck.check_adapters),
    Method("prompt_tuning", "learned virtual-token embeddings", "tiny artifacts; larger models gain most",
           peft_methods.prompt_tuning, "peft", objectives=frozenset({"sft", "pretrain", "mixture"})),
    Method("prefix_tuning", "learned keys/values in every layer", "tiny artifacts; steering style or format",
           peft_methods.prefix_tuning, "peft", objectives=frozenset({"sft", "pretrain", "mixture"})),
    Method("ia3", "vectors rescaling keys, values and MLP activations", "the fewest parameters that still "
           "adapt every layer; mergeable", peft_methods.ia3, "peft"),
    Method("bitfit", "bias terms only", "models with biases (BERT/MiniLM, GPT-2) and small data",
           selective.bitfit, "tensors", check=selective.check_bitfit),
    Method("probe", "a new classification head; the model is frozen",
           "labels from fixed features: fastest, a strong baseline", probing.probe, "tensors",
           objectives=HEAD_OBJECTIVES, check=probing.check_probe),
]
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}


def method_objective_pairs(valid: bool = True) -> list[tuple[str, str]]:
    """(method, objective) pairs that apply (or, with valid=False, those refused). `Method.objectives`
    above is the one table: `check_pair`'s errors and tests/test_matrix.py's parametrisation both read it."""
    return [(m.name, o) for m in _METHODS for o in sorted(ALL_OBJECTIVES) if (o in m.objectives) == valid]


def check_pair(cfg: MethodSection, objective: str) -> None:
    """Refuse a method that does not apply to `objective`, naming the methods that do."""
    method = METHODS[cfg.name]
    if objective in method.objectives:
        return
    fits = ", ".join(m.name for m in _METHODS if objective in m.objectives)
    raise ConfigError(f"method {cfg.name!r} does not apply to objective {objective!r}: {cfg.name} trains "
                      f"{method.trains} (for {', '.join(sorted(method.objectives))}); for {objective} "
                      f"choose one of {fits}", field="method.name")


def meta_model(path, auto_class: str = "AutoModelForCausalLM") -> nn.Module:
    """The model's structure without its weights (on torch's meta device): for checks, in milliseconds."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(config)


def check_method(cfg: MethodSection, objective: str, model: nn.Module | None = None) -> None:
    """Every check that can fail before work starts: the pair, then (given a model, meta is fine) the model."""
    check_pair(cfg, objective)
    method = METHODS[cfg.name]
    if model is not None and method.check is not None:
        method.check(model, cfg)


def apply_method(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """The model ready to train with `cfg.name`: only the method's parameters require gradients."""
    method = METHODS[cfg.name]
    if method.check is not None:
        method.check(model, cfg)
    return method.apply(model, cfg)
