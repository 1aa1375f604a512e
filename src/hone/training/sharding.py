"""FSDP2 sharding of hone's own loop (`train.sharding: fsdp2`, or accelerate's fsdp2 config).

Each rank keeps 1/N of every parameter, gradient and AdamW state (torch's `fully_shard`): one group
per decoder layer and the root group for the rest (embeddings, final norm, the head tied to them).
A group's parameters are all-gathered just before its forward and its gradients reduce-scattered
after its backward. What makes that correct here, each handled once, in `FSDP2` (the loop's hooks,
training/parallel.py) or in the functions it calls:

- hone's loss runs the decoder and then the head on trained positions only, never the root's
  forward, so the root group would never gather nor reduce: the loss runs as a registered forward
  method of the root instead (`register_fsdp_forward_method`), keeping the head-only saving.
- The loss is a sum over tokens divided by the trained tokens of the whole batch: gradients are
  summed across ranks (divide factor 1), not averaged as FSDP does by default; they arrive sharded,
  so the clipping norm is taken over the full gradients.
- Every rank must run the same number of forward/backward passes (each holds collectives): a rank
  with fewer micro-batches runs zero-weight ones (`FSDP2.fillers`).
- A layer run twice before its backward breaks the resharding: no shared prompt prefix run once per
  micro-batch, no KL-to-base (a second pass), no compile (not tested), all refused or turned off.
- Saving gathers the full weights and optimizer state onto rank 0 with every rank taking part
  (training/checkpoint.py); ranks stopped mid-collective by Ctrl-C cannot, so an interrupt writes none.
- After training the model is turned back into a plain one with the full weights on every rank
  (`unshard_model`), so saving, restore-best and evaluation run exactly as without sharding.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MethodType

import torch
from torch import nn

from hone.errors import ConfigError
from hone.training.distributed import Ranks, ranks

SYNC = "fsdp2 (fully_shard)"
SHARDED_FORWARD = "hone_sharded_logits"  # the root's registered forward method (training/loss.py calls it)


def sharding_wanted(cfg, world: int) -> bool:
    """Whether this run shards: `train.sharding: fsdp2` or accelerate's FSDP2 config, on more than one rank."""
    from hone.launch import sharding_requested

    return world > 1 and (cfg.sharding == "fsdp2" or sharding_requested() == "FSDP2")


def fuse_lora_wanted(cfg) -> bool:
    """`train.fused_lora`, except under sharding: fused q/k/v share one weight tensor, which cannot be sharded."""
    return cfg.fused_lora and not sharding_wanted(cfg, ranks().world)


def sync_name(cfg, world: int) -> str:
    """How the ranks keep in step, as run.json's `distributed.sync` records it."""
    return SYNC if sharding_wanted(cfg, world) else "gradient all-reduce"


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    from hone.training.loss import _unwrap

    base = _unwrap(model)
    layers = getattr(base.get_decoder(), "layers", None) if hasattr(base, "get_decoder") else None
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"train.sharding fsdp2 needs a decoder with a `layers` list; {type(base).__name__} has none",
                          field="train.sharding")
    return layers


def shard_model(model: nn.Module, world: int) -> int:
    """Shard `model` in place over `world` ranks; return the number of FSDP groups on this rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    from hone.training.loss import logits_on_trained

    quantized = [name for name, p in model.named_parameters()
                 if type(p) is not nn.Parameter or type(p.data) is not torch.Tensor]
    if quantized:  # bitsandbytes/torchao weights carry quantization state that a shard would lose
        raise ConfigError(f"train.sharding fsdp2 cannot shard quantized base weights ({quantized[0]}, ...): use method "
                          "lora (frozen weights in bf16) or train.sharding none", field="train.sharding")
    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world,))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for group in groups:
        group.set_gradient_divide_factor(1.0)  # sum, the loss is already normalised by the global tokens
        group.set_force_sum_reduction_for_comms(True)  # a factor alone asks for PREMUL_SUM, which gloo lacks

    def sharded_logits(self, batch, keep, head_only):
        return logits_on_trained(self, batch, keep, head_only, whole=self.forward)  # forward: no nested hooks

    setattr(model, SHARDED_FORWARD, MethodType(sharded_logits, model))
    register_fsdp_forward_method(model, SHARDED_FORWARD)
    return len(groups)


@torch.no_grad()
def unshard_model(model: nn.Module) -> None:
    """Turn a sharded `model` back into a plain one, in place, with the full weights on every rank.

    A collective: every rank must call it. FSDP2 offers no way back, so its hooks, state and
    classes are removed here (torch is pinned; tests/test_launch.py checks the result is plain)."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed.fsdp import FSDPModule

    for module in [m for m in model.modules() if isinstance(m, FSDPModule)]:
        state = module._get_fsdp_state()
        for group in state._fsdp_param_groups:
            for param in group.fsdp_params:
                sharded = param.sharded_param
                # a DTensor, which FSDPParam types as the Parameter it also is
                full = nn.Parameter(sharded.full_tensor(),  # type: ignore[attr-defined]
                                    requires_grad=sharded.requires_grad)
                param._setattr_on_modules(full)
                param._post_load_hook_handle.remove()
            for handles in (group._module_to_pre_save_state_dict_hook_handle,
                            group._module_to_pre_load_state_dict_hook_handle):
                for handle in handles.values():
                    handle.remove()
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for key in (STATE_KEY, REGISTRY_KEY):
            module.__dict__.pop(key, None)
        module.__dict__.pop(SHARDED_FORWARD, None)
        module.__class__ = next(c for c in type(module).__bases__ if c is not FSDPModule)


@dataclass(frozen=True)
class FSDP2:
    """The loop's hooks when every rank holds 1/N of the model (training/parallel.py has the other kind)."""
    team: Ranks
    shares_prefix = False      # a prefix run once, then each micro-batch: a layer run twice before backward
    saves = True               # every rank takes part in a checkpoint: the gather is a collective
    saves_on_interrupt = False  # ranks stop mid-collective: no gathered checkpoint; resume takes the last one

    @staticmethod
    def refuse(cfg) -> None:
        """Settings this sharding cannot take, refused in one line each."""
        if cfg.compile:
            raise ConfigError("train.compile with FSDP2 sharding is not supported here (not tested): set "
                              "train.compile=false or train.sharding=none", field="train.compile")
        if cfg.kl_to_base:
            raise ConfigError("train.kl_to_base runs the model twice per micro-batch, which FSDP2 sharding here does "
                              "not support: set train.kl_to_base=0 or train.sharding=none", field="train.kl_to_base")

    def wrap(self, model: nn.Module, console) -> dict:
        """Shard `model` (before the optimizer is built: it must hold the sharded parameters); return what
        run.json's `distributed` notes: every rank's FSDP groups, so that a silent fallback to replication shows."""
        groups = self.team.per_rank(shard_model(model, self.team.world))
        console.print(f"  sharding: FSDP2 over {self.team.world} processes, {groups[0]} groups each (weights, "
                      "gradients and optimizer state split across them)", highlight=False)
        return {"fsdp_groups_per_rank": groups}

    def fillers(self, passes: int) -> int:
        """How many zero-weight passes this rank adds to its `passes` so that every rank runs the same number."""
        return max(self.team.per_rank(passes)) - passes

    def sum_and_clip(self, params: list[nn.Parameter], max_norm: float) -> None:
        """Gradients are summed already (reduce-scattered after each backward); clip by the full gradients' norm."""
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)

    def unwrap(self, model: nn.Module, optimizer) -> None:
        """A plain model again, full weights on every rank (a collective): saving and evaluation as without sharding."""
        optimizer.state.clear()  # no longer needed: its shards would add to the full weights gathered next
        unshard_model(model)
