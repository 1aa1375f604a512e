"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the trainable weights (adapters are small; full fine-tuning saves everything
trainable), the optimizer state, the loop position and every RNG. It is written into a temporary
folder and renamed, so a kill at any moment leaves either the old checkpoint or the new one.

Under FSDP2 sharding (training/sharding.py) every rank takes part in gathering the full weights and
optimizer state, rank 0 writes the same files a single process writes, and loading scatters them
back from rank 0.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hone import atomic
from hone.training.distributed import ranks
from hone.training.sharding import is_sharded


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable weights by name; sharded, a collective that leaves them on rank 0 only (others get {})."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not is_sharded(model):
        params = dict(model.named_parameters())
        return {name: params[name].detach().contiguous().cpu() for name in names}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full: dict[str, Any] = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=True))
    return {name: full[name].contiguous() for name in names if name in full}  # tied weights: one name, as above


def optimizer_state(model, optimizer) -> dict:
    """`optimizer.state_dict()`; sharded, gathered onto rank 0 with parameters numbered as one process numbers them."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full: dict[str, Any] = get_optimizer_state_dict(model, optimizer,
                                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:
        return {}
    number = {name: i for i, name in enumerate(n for g in full["param_groups"] for n in g["params"])}
    return {"state": {number[name]: value for name, value in full["state"].items()},
            "param_groups": [g | {"params": [number[n] for n in g["params"]]} for g in full["param_groups"]]}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (trainable tensors by name) into `model`; sharded, rank 0's copy is scattered to all."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # torch asks for dict[str, ValueType], which a dict of tensors is, but dict is invariant
        set_model_state_dict(model, weights, options=StateDictOptions(  # type: ignore[arg-type]
            full_state_dict=True, broadcast_from_rank0=True, strict=False))
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def save_checkpoint(run_dir: Path, model, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint `state['step']`; keep the newest `keep` checkpoints."""
    target = checkpoint_dir(run_dir, state["step"])
    if not ranks().main:  # sharded: this rank helps gather what rank 0 writes
        trainable_state(model), optimizer_state(model, optimizer)
        return target
    with atomic.folder(target) as tmp:
        # One after the other: sharded, each is gathered whole onto this rank only for its write.
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer_state(model, optimizer), tmp / "optimizer.pt")
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written temporary folders are never listed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG from `path`; return the loop state."""
    sharded, main = is_sharded(model), ranks().main
    load_trainable(model, load_file(path / "trainable.safetensors") if main or not sharded else {})
    optimized = torch.load(path / "optimizer.pt", weights_only=False) if main or not sharded else {}
    if sharded:
        _load_sharded_optimizer(model, optimizer, optimized)
    else:
        optimizer.load_state_dict(optimized)
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def _load_sharded_optimizer(model, optimizer, optimized: dict) -> None:
    """Scatter rank 0's optimizer state (numbered as one process numbers it) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if optimized:
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        optimized = {"state": {names[i]: value for i, value in optimized["state"].items()},
                     "param_groups": [g | {"params": [names[i] for i in g["params"]]}
                                      for g in optimized["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optimized,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
