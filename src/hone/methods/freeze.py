"""Methods that train a chosen subset of the model's own weights: full, freeze, bitfit.

Nothing is added to the model. What trains is saved as a small set of tensors (full: the whole
model) and put back onto a fresh base when the run is reloaded.
"""
from __future__ import annotations

import re

from torch import nn

from hone.config import MethodSection
from hone.errors import ConfigError
from hone.methods.structure import block_index, family, task_head, transformer_blocks, unwrap

# Families whose transformers models carry bias terms, for the bitfit error message.
BIAS_FAMILIES = "BERT/MiniLM (e.g. all-minilm-l6-v2 with the classify objective), GPT-2, Qwen2 (attention biases)"


def _train_only(model: nn.Module, keep) -> nn.Module:
    """requires_grad on parameters whose name satisfies `keep(name)`, plus any task head."""
    head = task_head(model)
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(bool(keep(name)) or id(parameter) in head_params)
    return model


def full(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """Every parameter trains."""
    return _train_only(model, lambda name: True)


def _embedding_ids(model: nn.Module) -> set[int]:
    base = unwrap(model)
    ids = {id(p) for p in base.get_input_embeddings().parameters()}
    output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if output is not None:
        ids |= {id(p) for p in output.parameters()}
    return ids


def patterns(cfg: MethodSection) -> list[re.Pattern]:
    try:
        return [re.compile(p.strip()) for p in (cfg.trainable_patterns or "").split(",") if p.strip()]
    except re.error as exc:
        raise ConfigError(f"method.trainable_patterns: invalid regular expression: {exc}",
                          field="method.trainable_patterns") from None


def freeze_selection(model: nn.Module, cfg: MethodSection) -> set[str]:
    """Names of the parameters `freeze` trains: pattern matches, or the top blocks and the final norm."""
    names = [name for name, _ in model.named_parameters()]
    if cfg.trainable_patterns:
        regexes = patterns(cfg)
        return {n for n in names if any(r.search(n) for r in regexes)}
    blocks = block_index(model)
    n_blocks = len(transformer_blocks(model) or [])
    embeddings = _embedding_ids(model)
    params = dict(model.named_parameters())
    top = {n for n, i in blocks.items() if i >= n_blocks - cfg.trainable_layers}
    # Parameters after the layer stack (the final norm) train too; embeddings and the tied head do not.
    after = {n for n in names if n not in blocks and id(params[n]) not in embeddings
             and re.search(r"norm|ln_f", n) and not re.search(r"embed", n)}
    return top | after


def check_freeze(model: nn.Module, cfg: MethodSection) -> None:
    if cfg.trainable_patterns:
        if not freeze_selection(model, cfg):
            examples = ", ".join(n for n, _ in list(model.named_parameters())[1:4])
            raise ConfigError(f"method.trainable_patterns {cfg.trainable_patterns!r} matches no parameter "
                              f"of this model (names look like: {examples})", field="method.trainable_patterns")
        return
    blocks = transformer_blocks(model)
    if blocks is None:
        raise ConfigError("freeze found no stack of transformer blocks in this model; "
                          "give method.trainable_patterns instead", field="method.trainable_layers")
    if cfg.trainable_layers > len(blocks):
        raise ConfigError(f"method.trainable_layers is {cfg.trainable_layers} but this model has "
                          f"{len(blocks)} blocks; use {len(blocks)} or fewer (or method full)",
                          field="method.trainable_layers")


def freeze(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """Only the top `trainable_layers` blocks (or the parameters matching `trainable_patterns`) train."""
    check_freeze(model, cfg)
    selected = freeze_selection(model, cfg)
    return _train_only(model, lambda name: name in selected)


def check_bitfit(model: nn.Module, cfg: MethodSection) -> None:
    head = task_head(model)  # a new classifier's own bias does not count: bitfit would then be a probe
    in_head = {id(p) for p in head.parameters()} if head is not None else set()
    if not any(name.endswith("bias") and id(p) not in in_head for name, p in model.named_parameters()):
        raise ConfigError(f"bitfit trains bias terms only, and {family(model)} models have none; it applies "
                          f"to {BIAS_FAMILIES}. For this model choose lora or ia3", field="method.name")


def bitfit(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """Only the bias terms train (Ben Zaken et al. 2022, BitFit), plus a task head if there is one."""
    check_bitfit(model, cfg)
    return _train_only(model, lambda name: name.endswith("bias"))
