"""Quantized frozen bases for qlora: bitsandbytes NF4 (4-bit) or torchao int8 weight-only.

Every frozen linear layer except the output head is quantized; LoRA then trains in fp32 on top.
`load_quantized` quantizes NF4 layers as the weights stream in from safetensors, so the whole fp32
model is never in memory (transformers' own bitsandbytes loading peaked at 1.0 GB for SmolLM2-135M
on this CPU, more than the 0.4 GB of a plain fp32 load); other bases are quantized after loading.
The saved adapter is reloaded onto the same base passed through the same quantizer and dequantized
to fp32 (`round_trip_base`), so the reloaded model computes what was trained, and merges and
generates at fp32 speed.

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


def is_quantized(model: nn.Module) -> bool:
    """True once the base's linear layers are NF4 (quantized while loading, or by quantize_base)."""
    return any(getattr(getattr(m, "weight", None), "quant_state", None) is not None for m in unwrap(model).modules())


def check_quantized(model: nn.Module, cfg: MethodSection) -> None:
    library = LIBRARY[cfg.quantize]
    if importlib.util.find_spec(library) is None:
        raise ConfigError(f"qlora with method.quantize={cfg.quantize} needs {library}: "
                          "pip install 'hone[qlora]'", field="method.quantize")
    if not _quantizable(model) and not is_quantized(model):
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
        # peft then uses its bitsandbytes LoRA layer
        unwrap(model).is_loaded_in_4bit = True  # type: ignore[assignment]  # peft reads it; transformers does not declare it
    else:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        targets = {id(layer) for _, _, layer in _quantizable(model)}
        quantize_(unwrap(model), Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: id(module) in targets)
    return model


def load_base(base, cfg: MethodSection, device: str = "cpu", attention: str | None = None) -> nn.Module:
    """The causal LM a method starts from: for qlora with NF4 from a safetensors folder, quantized
    while loading (SmolLM2-135M: the load raised peak RSS by 0.24 GB, against 0.68 GB for an fp32
    load quantized afterwards); otherwise the fp32 base, which `apply_method` quantizes for qlora."""
    from pathlib import Path

    from hone.models.catalogue import resolve_model
    from hone.models.load import load_causal_lm

    resolved = resolve_model(base) if isinstance(base, str) else base
    folder = Path(resolved.path)
    streamable = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if cfg.name == "qlora" and cfg.quantize == "nf4" and streamable:
        return load_quantized(folder, device, attention)
    return load_causal_lm(resolved, device, attention=attention)


def load_quantized(path, device: str = "cpu", attention: str | None = None) -> nn.Module:
    """A causal LM from a safetensors folder with its linear layers (not the output head) in NF4,
    quantized one tensor at a time as they are read: the same layers and the same quantizer as
    `quantize_base`, so `round_trip_base` reloads what trained."""
    import json
    from pathlib import Path

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_quantization_libraries()
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()}) \
        if index.is_file() else [folder / "model.safetensors"]
    config = AutoConfig.from_pretrained(folder)
    extra = {"attn_implementation": attention} if attention else {}
    with init_empty_weights(include_buffers=False):  # parameters on "meta"; rotary buffers computed for real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **extra)
    layers = {f"{_name(model, parent)}{name}": (parent, name, layer) for parent, name, layer in _quantizable(model)}
    pending: dict[str, dict[str, torch.Tensor]] = {}  # a layer's weight and bias may come in either order
    for file in files:
        for key, tensor in _read_tensors(file):
            prefix, _, attribute = key.rpartition(".")
            if prefix not in layers or attribute not in ("weight", "bias"):
                _set_tensor(model, key, tensor)
                continue
            parent, name, layer = layers[prefix]
            got = pending.setdefault(prefix, {})
            got[attribute] = tensor
            if "weight" in got and ("bias" in got or layer.bias is None):
                layer.weight = nn.Parameter(got["weight"], requires_grad=False)
                if layer.bias is not None:
                    layer.bias = nn.Parameter(got["bias"], requires_grad=False)
                setattr(parent, name, _nf4(layer, compute_dtype()))
                del layers[prefix], pending[prefix], got, tensor, layer  # the fp32 copy goes now
                _return_freed_memory()
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ConfigError(f"{folder}: weights missing for {len(missing)} parameters (first: {missing[0]})")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device).eval()


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _read_tensors(path):
    """A safetensors file's (name, tensor) pairs, floats as fp32, read one at a time with plain reads.
    Not memory-mapped: every page of a map that loading touches counts in the process's RSS for as
    long as any tensor keeps the map open (538 MB for SmolLM2-135M, the size this path avoids)."""
    import json

    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        header.pop("__metadata__", None)
        for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            handle.seek(8 + size + start)
            dtype = _DTYPES[info["dtype"]]
            tensor = torch.frombuffer(bytearray(handle.read(end - start)), dtype=dtype) if end > start \
                else torch.empty(0, dtype=dtype)
            tensor = tensor.reshape(info["shape"])
            yield key, tensor.float() if tensor.is_floating_point() else tensor


def _return_freed_memory() -> None:
    """glibc keeps the freed fp32 layers (1-4 MB each, under its malloc threshold) in the heap; hand them back."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _name(model: nn.Module, module: nn.Module) -> str:
    """The dotted prefix of `module` inside `model` ('' for the model itself)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise KeyError(type(module).__name__)


def _set_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put a checkpoint tensor into the parameter or buffer `key` names (keys the model lacks are skipped,
    as transformers skips them)."""
    owner_name, _, attribute = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return
    if attribute in owner._parameters:
        owner._parameters[attribute] = nn.Parameter(tensor, requires_grad=False)
    elif attribute in owner._buffers:
        owner._buffers[attribute] = tensor


def round_trip_base(model: nn.Module, kind: str) -> nn.Module:
    """The base as qlora trained it, back in fp32: quantize each linear layer, then dequantize it."""
    quiet_quantization_libraries()
    layers = _quantizable(model)
    for _parent, _name, layer in layers:
        if kind == "nf4":
            import bitsandbytes.functional as bnbf

            quantized = _nf4(layer, torch.float32)
            # a bitsandbytes Linear4bit, whose weight is a Params4bit with a quant_state
            weight = bnbf.dequantize_4bit(quantized.weight.data, quantized.weight.quant_state)  # type: ignore[arg-type, union-attr]
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
