"""Mixed precision for frozen weights: bf16 matmuls where nothing trains, fp32 where something does.

Measured on the 2-core CPU (SmolLM2-135M, LoRA r16 all-linear, batch 16x144): a training step took
~10.5 s in fp32 with "medium" matmul precision and ~8.3 s with the frozen base linears in bf16; with
eager attention instead of SDPA as well, ~5.9 s. The LoRA branch, its add and the residual stream
stay fp32, so none of the early-update rounding of eager bf16 autocast (field notes §4): the gradient
differed from the fp32 one by 2.6% (cosine 1.000).
"""
from __future__ import annotations

import torch
from torch import nn

from hone.training.fused_lora import fuse_lora_layers

# Longest padded sequence for which eager attention beats SDPA on CPU and its L x L weights stay
# small (16 x 9 heads x 512^2 fp32 is 150 MB per layer kept for backward).
EAGER_ATTENTION_MAX_LENGTH = 512


def _to_bf16_input(module, args):
    return (args[0].to(torch.bfloat16),) + tuple(args[1:])


def _to_fp32_output(module, args, output):
    return output.float()


def bf16_frozen_linears(model: nn.Module, fuse_lora: bool = True) -> int:
    """Cast every frozen linear layer (except the output head) to bf16, in place; return how many.

    Inputs are cast to bf16 on the way in and outputs back to fp32 on the way out, so the rest of
    the model, and every trainable parameter, stays fp32. The fp32 base weights are gone afterwards:
    evaluate a tuned model by reloading the saved adapter onto a fresh base. With `fuse_lora`, each
    plain LoRA layer over such a base runs as one autograd node (training/fused_lora.py).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]  # torch types module attributes as Tensor | Module
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module is head or module.weight.requires_grad:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        if type(module.weight.data) is not torch.Tensor:  # already quantized (torchao int8 qlora base)
            continue
        module.to(torch.bfloat16)
        module.register_forward_pre_hook(_to_bf16_input)
        module.register_forward_hook(_to_fp32_output)
        count += 1
    _own_fp32_weights(model)
    if head is not None:
        _bf16_head_gradient(head)
    if fuse_lora:
        fuse_lora_layers(model)
    return count


class _HeadLinear(torch.autograd.Function):
    """logits = h @ W^T in fp32; the gradient reaching h, g @ W, in bf16 from a bf16 copy of the frozen W.

    Logits stay fp32: bf16 would round them by up to ~0.06 at |logit| 16-32, against losses of ~0.07.
    The input gradient is what every bf16 base linear computes too (training/fused_lora.py). Measured on the
    embedded model's head (161 trained tokens x 576 -> 49,152): 60 -> 30 ms per micro-batch.
    """

    @staticmethod
    def forward(ctx, hidden, weight, weight_low):
        ctx.save_for_backward(weight_low)
        return torch.nn.functional.linear(hidden, weight)

    @staticmethod
    def backward(ctx, grad):
        (weight_low,) = ctx.saved_tensors
        return torch.matmul(grad.to(weight_low.dtype), weight_low).float(), None, None


def _bf16_head_gradient(head: nn.Module) -> None:
    """Give a frozen fp32 output head (no bias) the bf16 input gradient above; a trained head keeps its own."""
    if (type(head) is not nn.Linear or head.bias is not None or head.weight.dtype != torch.float32
            or head.weight.requires_grad):
        return
    # A buffer, so that memory estimates (methods/memory.py, `hone plan`) count it; not saved.
    head.register_buffer("hone_weight_bf16", head.weight.detach().to(torch.bfloat16), persistent=False)
    plain_forward = head.forward

    def forward(hidden):
        if head.weight.requires_grad or hidden.dtype != torch.float32 or not torch.is_grad_enabled():
            return plain_forward(hidden)
        return _HeadLinear.apply(hidden, head.weight, head.hone_weight_bf16)

    head.forward = forward


@torch.no_grad()
def _own_fp32_weights(model: nn.Module) -> None:
    """Copy the frozen fp32 weights left (embeddings, norms) out of the loaded file's memory map.

    transformers maps the safetensors file and the fp32 tensors alias it; while one does, every page
    read during loading stays resident: 405 of the embedded model's 538 MB, after its linears were
    already copied to bf16. Copying the rest unmaps the file (peak RSS of a LoRA step 3.0 -> 2.6 GB).
    """
    for param in model.parameters():
        if param.dtype == torch.float32 and not param.requires_grad:
            param.data = param.data.clone()


def pick_attention(device: str, longest: int) -> str:
    """Attention kernel for a run whose longest example has `longest` tokens."""
    if device == "cpu" and longest <= EAGER_ATTENTION_MAX_LENGTH:
        return "eager"
    return "sdpa"
