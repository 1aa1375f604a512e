"""What training will hold in memory, estimated before it starts.

weights (real bytes, quantized or bf16 where they are) + gradients (fp32, trainable only) + AdamW's
two fp32 moments (trainable only) + activations kept for the backward pass + the logits of the
trained tokens. Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation"):
per token and layer a block keeps about 16 hidden-size vectors and 3 MLP-width vectors, plus
2 x heads x length attention weights with eager attention; hone keeps them in fp32. Only layers
from the lowest one holding a trainable parameter (or below a trainable input) up need them.
docs/methods.md compares the estimate with measured peak memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hone.methods.quantized import tensor_bytes
from hone.methods.structure import transformer_blocks, unwrap

GB = 1024 ** 3
FP32 = 4


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    shape: tuple[int, int]   # (micro-batch, tokens) the activation figure is for

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def __str__(self) -> str:
        return (f"~{self.total / GB:.1f} GB = weights {self.weights / GB:.2f} + gradients {self.gradients / GB:.2f}"
                f" + AdamW {self.optimizer / GB:.2f} + activations {self.activations / GB:.2f}"
                f" ({self.shape[0]}x{self.shape[1]} tokens)")


def _layers_in_backward(model: nn.Module) -> int:
    """How many blocks' activations the backward pass needs: from the lowest trainable one up."""
    blocks = transformer_blocks(model)
    if blocks is None:
        return 0
    # Trainable inputs (embeddings, prompt tuning's virtual tokens, prefix tuning's keys) need every layer.
    base = unwrap(model)
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    inputs = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    if any(p.requires_grad and (id(p) in inputs or "prompt_encoder" in name) for name, p in model.named_parameters()):
        return len(blocks)
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return len(blocks) - i
    return 0


def estimate_memory(model: nn.Module, micro_batch: int, length: int, trained_tokens: int | None = None,
                    eager_attention: bool = True) -> MemoryEstimate:
    """Training memory for `micro_batch` sequences of `length` tokens (`trained_tokens` carrying loss).

    Eager attention keeps its L x L weights per head for backward; SDPA's fused kernels do not."""
    weights = sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = unwrap(model).config
    hidden = getattr(config, "hidden_size", 0)
    mlp = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", 1)
    layers = _layers_in_backward(model)
    tokens = micro_batch * length
    per_token_layer = FP32 * (16 * hidden + 3 * mlp + (2 * heads * length if eager_attention else 0))
    activations = tokens * layers * per_token_layer
    vocab = getattr(config, "vocab_size", 0)
    head = unwrap(model).get_output_embeddings() if hasattr(unwrap(model), "get_output_embeddings") else None
    if vocab and head is not None:
        # logits, their softmax and its gradient for the loss-bearing tokens
        activations += 3 * FP32 * vocab * (trained_tokens if trained_tokens is not None else tokens)
    return MemoryEstimate(weights, FP32 * trainable, 2 * FP32 * trainable, activations, (micro_batch, length))
