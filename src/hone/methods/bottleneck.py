"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small MLP after each block's MLP.

peft has no bottleneck adapter (its `adaption_prompt` is LLaMA-Adapter, a different method) and the
`adapters` library pins transformers 4, so hone carries this one small module. Each adapter is
h + up(gelu(down(h))) with `up` initialised to zero, so training starts from the base model exactly.
It is attached with a forward hook, so the base model's own parameter names do not change.
"""
from __future__ import annotations

import torch
from torch import nn

from hone.config import MethodSection
from hone.errors import ConfigError
from hone.methods.structure import task_head, transformer_blocks, unwrap

# Where a block keeps its feed-forward part: Llama/Qwen/GPT-2 `mlp`, others `feed_forward`/`ffn`,
# BERT/MiniLM `output` (its dense + residual + LayerNorm after the intermediate layer).
MLP_NAMES = ("mlp", "feed_forward", "ffn", "output")
ATTRIBUTE = "bottleneck_adapter"


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, size: int):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.gelu(self.down(hidden)))

    def after_mlp(self, module, args, output):
        """Forward hook on the block's MLP: its output goes through the adapter."""
        if isinstance(output, tuple):
            return (self(output[0]),) + output[1:]
        return self(output)


def _mlp(block: nn.Module) -> nn.Module | None:
    for name in MLP_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def check_adapters(model: nn.Module, cfg: MethodSection) -> None:
    blocks = transformer_blocks(model)
    if blocks is None or any(_mlp(b) is None for b in blocks):
        raise ConfigError(f"adapters found no MLP ({', '.join(MLP_NAMES)}) in this model's blocks; "
                          "choose lora", field="method.name")


def add_adapters(model: nn.Module, size: int) -> nn.Module:
    """Insert a fresh bottleneck adapter after every block's MLP, in place; only the adapters train."""
    hidden = unwrap(model).config.hidden_size
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    blocks = transformer_blocks(model)
    assert blocks is not None  # check_adapters refuses a model without blocks
    for block in blocks:
        reference = next(block.parameters())
        adapter = BottleneckAdapter(hidden, size).to(device=reference.device, dtype=torch.float32)
        block.add_module(ATTRIBUTE, adapter)
        mlp = _mlp(block)
        assert mlp is not None  # check_adapters refuses a block without an MLP
        mlp.register_forward_hook(adapter.after_mlp)
    head = task_head(model)  # a new classification head must train too
    for parameter in head.parameters() if head is not None else []:
        parameter.requires_grad_(True)
    return model


def adapters(model: nn.Module, cfg: MethodSection) -> nn.Module:
    """Bottleneck adapters of width `adapter_size` after each block's MLP; the base is frozen."""
    check_adapters(model, cfg)
    return add_adapters(model, cfg.adapter_size)
