"""Where things are inside a transformers model: its blocks, its task head, its peft task type.

The methods work on any architecture transformers builds, so they find parts by structure rather
than by one family's attribute names (Llama `model.layers`, GPT-2 `transformer.h`, BERT
`encoder.layer`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Heads that transformers' *ForSequenceClassification / *ForTokenClassification models create.
TASK_HEAD_NAMES = ("score", "classifier")


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (or the model itself)."""
    # torch types a module's attributes as Tensor | Module, so mypy cannot see peft's method
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return cast("PreTrainedModel", base)


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The longest ModuleList of identical blocks: the model's layer stack."""
    best = None
    for module in unwrap(model).modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(block) for block in module}) == 1 and (best is None or len(module) > len(best)):
                best = module
    return best


def block_index(model: nn.Module) -> dict[str, int]:
    """Parameter name -> index of the block holding it, for parameters inside the layer stack."""
    blocks = transformer_blocks(model)
    if blocks is None:
        return {}
    owner = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    return {name: owner[id(p)] for name, p in unwrap(model).named_parameters() if id(p) in owner}


def task_head(model: nn.Module) -> nn.Module | None:
    """A classification head the model already has (`score` or `classifier`), else None."""
    base = unwrap(model)
    for name in TASK_HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def peft_task_type(model: nn.Module) -> str:
    """peft's task type for this model class, so peft keeps a new classification head trainable."""
    name = type(unwrap(model)).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    return "CAUSAL_LM"


def family(model: nn.Module) -> str:
    """The model family in the user's words: the config's model_type ('llama', 'bert', 'gpt2')."""
    return getattr(unwrap(model).config, "model_type", type(unwrap(model)).__name__)
