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

# Where a method applies, by what the objective builds (objectives/registry.py says it per objective):
#   any       every objective
#   own_loop  objectives that train the language-model head in hone's own loop (sft, pretrain, mixture):
#             virtual tokens and prefixes are not supported by TRL's trainers or task heads
#   head      objectives that put a new task head on the model (classify, ner, reward)
WHERE = {"any": "every objective", "own_loop": "objectives trained in hone's own loop",
         "head": "objectives with a new task head"}


@dataclass(frozen=True)
class Method:
    name: str
    trains: str                                   # what changes, in one line
    choose_when: str                              # when a user should pick it
    apply: Callable[[nn.Module, MethodSection], nn.Module]
    saves: str                                    # "peft", "tensors" or "model" (methods/artifact.py)
    where: str = "any"                            # a key of WHERE
    check: Optional[Callable[[nn.Module, MethodSection], None]] = None

    def applies(self, head: bool, own_loop: bool) -> bool:
        """Does the method apply to an objective with a new head (`head`) / trained in hone's loop?"""
        return {"any": True, "own_loop": own_loop and not head, "head": head}[self.where]

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
           peft_methods.prompt_tuning, "peft", where="own_loop"),
    Method("prefix_tuning", "learned keys/values in every layer", "tiny artifacts; steering style or format",
           peft_methods.prefix_tuning, "peft", where="own_loop"),
    Method("ia3", "vectors rescaling keys, values and MLP activations", "the fewest parameters that still "
           "adapt every layer; mergeable", peft_methods.ia3, "peft"),
    Method("bitfit", "bias terms only", "models with biases (BERT/MiniLM, GPT-2) and small data",
           selective.bitfit, "tensors", check=selective.check_bitfit),
    Method("probe", "a new classification head; the model is frozen",
           "labels from fixed features: fastest, a strong baseline", probing.probe, "tensors",
           where="head", check=probing.check_probe),
]
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}


def check_pair(cfg: MethodSection, objective: str, head: bool, own_loop: bool, fits: list[str]) -> None:
    """Refuse a method that does not apply to `objective` (which has a new head / trains in hone's loop),
    naming the methods that do; `fits` are the objectives the method applies to."""
    method = METHODS[cfg.name]
    if method.applies(head, own_loop):
        return
    choose = ", ".join(m.name for m in _METHODS if m.applies(head, own_loop))
    raise ConfigError(f"method {cfg.name!r} does not apply to objective {objective!r}: {cfg.name} trains "
                      f"{method.trains} (for {', '.join(fits)}); for {objective} choose one of {choose}",
                      field="method.name")


def meta_model(path, auto_class: str = "AutoModelForCausalLM") -> nn.Module:
    """The model's structure without its weights (on torch's meta device): for checks, in milliseconds."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(config)


def check_method(cfg: MethodSection, model: nn.Module) -> None:
    """The method against the model's structure (given a weightless meta copy, before any work starts)."""
    method = METHODS[cfg.name]
    if method.check is not None:
        method.check(model, cfg)


def apply_method(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """The model ready to train with `cfg.name`: only the method's parameters require gradients."""
    method = METHODS[cfg.name]
    if method.check is not None:
        method.check(model, cfg)
    return method.apply(model, cfg)
