"""Quantized frozen bases for qlora: bitsandbytes NF4 (4-bit) or torchao int8 weight-only.

Every frozen linear layer except the output head is quantized in place after loading; LoRA then
trains in fp32 on top. The saved adapter is reloaded onto the same base passed through the same
quantizer and dequantized to fp32 (`round_trip_base`), so the reloaded model computes what was
trained, and merges and generates at fp32 speed.

Measured here (field notes §5, SmolLM2-135M): NF4 base 110 MB instead of 538 MB fp32, int8 164 MB.
bitsandbytes' fast CPU kernel comes from a hub this machine cannot reach, so NF4 runs a slower
fallback; docs/methods.md has the speeds.
"""
from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from hone.config import MethodSection
from hone.errors import ConfigError
from hone.methods.structure import task_head, unwrap

LIBRARY = {"nf4": "bitsandbytes", "int8": "torchao"}


def quiet_quantization_libraries() -> None:
    """bitsandbytes and torchao log warnings on import about kernels this CPU does not use."""
    for name in ("bitsandbytes", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quantizable(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every plain linear layer except the output head and a new task
    head (a classifier's head trains whole, so it stays fp32)."""
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    heads = {id(m) for m in (head, task_head(model)) if m is not None}
    found = []
    for parent in base.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and id(child) not in heads:
                found.append((parent, name, child))
    return found


def check_quantized(model: nn.Module, cfg: MethodSection) -> None:
    library = LIBRARY[cfg.quantize]
    if importlib.util.find_spec(library) is None:
        raise ConfigError(f"qlora with method.quantize={cfg.quantize} needs {library}: "
                          "pip install 'hone[qlora]'", field="method.quantize")
    if not _quantizable(model):
        raise ConfigError("qlora quantizes linear layers and this model has none it can quantize "
                          "(GPT-2 uses Conv1D); choose lora", field="method.name")


def compute_dtype() -> torch.dtype:
    """bf16 matmuls where hone's precision choice uses them for frozen weights, else fp32."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.get_float32_matmul_precision() == "medium" else torch.float32


def _nf4(layer: nn.Linear, dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    device = layer.weight.device
    quantized = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                  compute_dtype=dtype, quant_type="nf4", device="meta")
    quantized.weight = bnb.nn.Params4bit(layer.weight.data.detach().to("cpu"), requires_grad=False, quant_type="nf4")
    if layer.bias is not None:
        quantized.bias = nn.Parameter(layer.bias.data.detach(), requires_grad=False)
    # bitsandbytes 0.50 repacks a CPU NF4 weight for a bf16 inference kernel the first time the layer
    # runs in eval mode without gradients (a validation pass), rounding its scales to bf16 for good;
    # training after that ran on a base ~4e-4 off, and the forward pass no longer matched the reload.
    quantized.support_avx512bf16_for_cpu = False
    return quantized.to(device)  # bitsandbytes quantizes on the move to a device


def quantize_base(model: nn.Module, kind: str, dtype: torch.dtype | None = None) -> nn.Module:
    """Quantize the frozen linear layers of `model` in place ("nf4" or "int8"); return it."""
    quiet_quantization_libraries()
    dtype = dtype or compute_dtype()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if kind == "nf4":
        for parent, name, layer in _quantizable(model):
            setattr(parent, name, _nf4(layer, dtype))
        unwrap(model).is_loaded_in_4bit = True  # peft then uses its bitsandbytes LoRA layer
    else:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        targets = {id(layer) for _, _, layer in _quantizable(model)}
        quantize_(unwrap(model), Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: id(module) in targets)
    return model


def round_trip_base(model: nn.Module, kind: str) -> nn.Module:
    """The base as qlora trained it, back in fp32: quantize each linear layer, then dequantize it."""
    quiet_quantization_libraries()
    layers = _quantizable(model)
    for parent, name, layer in layers:
        if kind == "nf4":
            import bitsandbytes.functional as bnbf

            quantized = _nf4(layer, torch.float32)
            weight = bnbf.dequantize_4bit(quantized.weight.data, quantized.weight.quant_state)
        else:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            holder = nn.Sequential(nn.Linear(layer.in_features, layer.out_features, bias=False))
            holder[0].weight = nn.Parameter(layer.weight.data.detach().clone(), requires_grad=False)
            quantize_(holder, Int8WeightOnlyConfig())
            weight = holder[0].weight.dequantize()
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))
    return model


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Real bytes of a tensor, looking inside quantized tensor subclasses (their nominal size lies)."""
    data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
    if hasattr(data, "__tensor_flatten__") and type(data) is not torch.Tensor:
        names, _ = data.__tensor_flatten__()
        return sum(tensor_bytes(getattr(data, n)) for n in names)
    size = data.numel() * data.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes keeps scales beside the packed weight
    if state is not None and getattr(state, "absmax", None) is not None:
        size += state.absmax.numel() * state.absmax.element_size()
    return size


def logical_numel(parameter: torch.Tensor) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight holds two per byte."""
    state = getattr(parameter, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return parameter.numel()


# peft imports both libraries whenever they are installed, for every method: quiet them up front.
quiet_quantization_libraries()
