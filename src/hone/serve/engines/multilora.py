"""Many LoRA adapters in one batch: their weights stacked per layer, two matmuls per LoRA linear for all rows.

peft routes a mixed batch (`adapter_names`, one per row) through `LoraLayer._mixed_batch_forward`, which loops
in Python over the distinct adapters of the batch in each LoRA linear: a list of row indices, a gather, two
skinny matmuls and an indexed add per adapter per layer (210 LoRA linears in SmolLM2-135M all-linear). 20
adapters served together ran at 0.08x a merged model's tokens/s that way (docs/decisions.md, "Many adapters
over one base, measured"). This module does what S-LoRA / punica's BGMV do on GPUs, in plain torch ops:

- per LoRA linear, the loaded adapters' A and B live in two stacked tensors, A `[n * R, in]` and B
  `[out, n * R]` (R: the largest rank loaded; a smaller rank is padded with zeros, which add nothing), each
  adapter's `scaling` (alpha / r, or alpha / sqrt(r) with rslora, per-layer patterns included) folded into its
  B columns;
- per forward, the rows' adapters become one mask `[rows, u * R]` over the u adapters the batch uses (ones on
  a row's own adapter's R columns, zeros for a base row), built once and shared by every layer;
- per LoRA linear, a forward hook adds `((x @ A_u.T) * mask) @ B_u.T` to the base linear's output: two dense
  matmuls and a multiply whatever the number of adapters, with peft's own LoRA switched off in the layer for
  that forward. When the batch uses every loaded adapter the stacks are used as they are; otherwise the u
  used adapters' columns are selected first (u * R * (in + out) floats copied per layer, never more than a
  per-row gather would copy).
Measured on the 135M model, 20 adapters r16, CPU (benchmarks/README.md): one decode step 2.3-3.2x faster than
peft's loop (8-16 rows), 0.56-0.64x a merged model's step; through `hone serve` 1.58x peft's tokens/s.

Covered (the adapters hone's `lora` method trains: `peft_methods._lora_config`, any target modules,
`all-linear` included, any rank and alpha, rslora; rank/alpha patterns too, as each layer's own r and
scaling are read, though no test covers them): plain LoRA on `nn.Linear` layers,
no bias on B, no `fan_in_fan_out`, no `modules_to_save`, no `trainable_token_indices`. Dropout is off
(inference). A batch with any other adapter keeps peft's own path, unchanged: DoRA (a magnitude vector per
weight) and the other `lora_variant`s (aLoRA, ...), LoRA on embeddings or convolutions, `lora_bias`, adapters
with `modules_to_save` (e.g. a classification head) or trainable tokens, LoRA on a quantized base layer.
IA3, prompt and prefix tuning never reach here (they load as models of their own: serve/engine.py).

The stacks copy the adapters' weights (peft keeps its own for the fallback path and for single-adapter
batches): a LoRA r16 all-linear adapter on the 135M model is ~20 MB. They are rebuilt whenever an adapter
is loaded onto the shared base or deleted from it (`sync`, called by the engine under the base's lock).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, cast

import torch
import torch.nn.functional as F
from torch import nn

_ATTRIBUTE = "_hone_stacked_lora"   # where a PeftModel keeps its StackedLora
# Select the used adapters' columns (a copy) only when the batch uses fewer than this share of the loaded ones;
# otherwise multiply through all of them. 8 or 16 rows over 20 adapters at load ~10 could not tell the two apart.
SELECT_BELOW = 0.5


@dataclass
class _Rows:
    """One forward's routing: which stacked columns it uses (None: all of them) and each row's mask."""
    columns: torch.Tensor | None
    mask: torch.Tensor | None      # [rows, columns]; None when every row uses the one adapter selected


@dataclass(eq=False)
class _LayerStack:
    """One LoRA linear's adapters, stacked: A [n * R, in], B [out, n * R] with each adapter's scaling in B."""
    owner: StackedLora
    a: torch.Tensor
    b: torch.Tensor
    handle: Any = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        rows = self.owner.current
        if rows is None:
            return None          # not a stacked forward: peft's own path ran
        x = args[0].to(self.a.dtype)
        a, b = self.a, self.b
        if rows.columns is not None:
            a, b = a.index_select(0, rows.columns), b.index_select(1, rows.columns)
        hidden = F.linear(x, a)
        if rows.mask is not None:
            hidden = hidden * rows.mask.view(rows.mask.shape[0], *([1] * (x.dim() - 2)), rows.mask.shape[1])
        return output + F.linear(hidden, b).to(output.dtype)


@dataclass(eq=False)
class StackedLora:
    """The stacked LoRA weights of every covered adapter on one PeftModel, and the hooks that use them."""
    model: nn.Module
    names: list[str] = field(default_factory=list)     # slot order: adapter `names[s]` owns columns s*R..s*R+R
    rank: int = 0                                       # R: the largest rank among them
    layers: dict[str, _LayerStack] = field(default_factory=dict)
    lora_layers: list[Any] = field(default_factory=list)   # every peft LoraLayer of the model, covered or not
    current: _Rows | None = None                         # set only inside `rows()`

    def covers(self, names: list[str | None]) -> bool:
        """Whether a batch whose rows use `names` (None: the base) can take the stacked path."""
        wanted = {name for name in names if name is not None}
        return bool(self.layers) and wanted <= set(self.names)

    @contextmanager
    def rows(self, names: list[str | None]) -> Iterator[None]:
        """Within this block the model's forward sends row i through adapter `names[i]` (None: the base
        alone), every LoRA linear computing all rows' LoRA terms at once; peft's own LoRA is off meanwhile."""
        self.current = self._routing(names)
        lora_layers = self.lora_layers
        saved = [m._disable_adapters for m in lora_layers]
        try:
            for m in lora_layers:   # peft's layer then runs its base linear only (LoraLayer.forward)
                m._disable_adapters = True
            yield
        finally:
            for m, was in zip(lora_layers, saved):
                m._disable_adapters = was
            self.current = None

    def _routing(self, names: list[str | None]) -> _Rows | None:
        slot = {name: s for s, name in enumerate(self.names)}
        slots = [slot[name] if name is not None else -1 for name in names]
        used = sorted({s for s in slots if s >= 0})
        if not used:
            return None          # base rows only: the hooks add nothing
        device = next(iter(self.layers.values())).a.device
        r = self.rank
        position = {s: i for i, s in enumerate(used)}
        columns = None
        if len(used) < SELECT_BELOW * len(self.names):
            columns = torch.tensor([s * r + k for s in used for k in range(r)], device=device)
        if len(used) == 1 and slots[0] >= 0 and len(set(slots)) == 1:
            return _Rows(columns, None)       # one adapter for every row: no mask to apply
        width = (len(used) if columns is not None else len(self.names)) * r
        mask = torch.zeros((len(slots), width), dtype=next(iter(self.layers.values())).a.dtype)
        for i, s in enumerate(slots):
            if s >= 0:
                start = position[s] * r if columns is not None else s * r
                mask[i, start:start + r] = 1
        return _Rows(columns, mask.to(device))

    def remove(self) -> None:
        for layer in self.layers.values():
            if layer.handle is not None:
                layer.handle.remove()
        self.layers.clear()


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def covered_adapters(model: nn.Module) -> list[str]:
    """The adapters on `model` the stacked path can run exactly (see the module docstring); others keep peft's."""
    from peft.tuners.lora import Linear as LoraLinear

    configs = getattr(model, "peft_config", {})
    names = []
    for name, config in configs.items():
        if getattr(config, "peft_type", None) != "LORA" or getattr(config, "use_dora", False) \
                or getattr(config, "lora_bias", False) or getattr(config, "fan_in_fan_out", False) \
                or getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
            continue
        layers = [m for m in model.modules() if _is_lora_layer(m) and name in _layer_adapters(m)]
        if layers and all(type(m) is LoraLinear and name not in m.lora_variant and isinstance(m.base_layer, nn.Linear)
                          and m.lora_B[name].bias is None and not m.merged for m in layers):
            names.append(name)
    return names


def _layer_adapters(module: nn.Module) -> set[str]:
    return set(getattr(module, "lora_A", {}).keys()) | set(getattr(module, "lora_embedding_A", {}).keys())


@torch.no_grad()
def sync(model: nn.Module) -> StackedLora | None:
    """(Re)build `model`'s stacks from the adapters it holds now; call after loading or deleting one.
    None (and nothing installed) when `model` is not a PeftModel or holds no covered adapter."""
    old = installed(model)
    if old is not None:
        old.remove()
        delattr(model, _ATTRIBUTE)
    names = covered_adapters(model)
    if not names:
        return None
    stacked = StackedLora(model, names, lora_layers=[m for m in model.modules() if _is_lora_layer(m)])
    ranks: list[dict[str, int]] = [cast(dict, m.r) for m in stacked.lora_layers]
    stacked.rank = max(rank[name] for rank in ranks for name in names if name in rank)
    r, n = stacked.rank, len(names)
    for path, module in model.named_modules():
        if not _is_lora_layer(module) or not set(names) & set(module.lora_A.keys()):
            continue
        weight = next(iter(module.lora_A[k] for k in names if k in module.lora_A)).weight
        a = torch.zeros((n * r, module.in_features), dtype=weight.dtype, device=weight.device)
        b = torch.zeros((module.out_features, n * r), dtype=weight.dtype, device=weight.device)
        for s, name in enumerate(names):
            if name in module.lora_A:
                rank = module.r[name]
                a[s * r:s * r + rank] = module.lora_A[name].weight
                b[:, s * r:s * r + rank] = module.lora_B[name].weight * module.scaling[name]
        layer = _LayerStack(stacked, a, b)
        layer.handle = module.register_forward_hook(layer)
        stacked.layers[path] = layer
    setattr(model, _ATTRIBUTE, stacked)
    return stacked


def installed(model: nn.Module) -> StackedLora | None:
    """The StackedLora `sync` put on `model`, if any."""
    return getattr(model, _ATTRIBUTE, None)


def stacked_rows(model: nn.Module, names: list[str | None]):
    """The stacked path's context for a batch whose rows use `names` (None: the base), or None when the
    model has no stacks or one of the adapters is not covered (then the caller keeps peft's path)."""
    stacked = installed(model)
    if stacked is None or not stacked.covers(names):
        return None
    return stacked.rows(names)
