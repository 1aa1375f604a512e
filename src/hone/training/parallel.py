"""How the ranks of hone's own loop share the work: one small object whose hooks the loop calls.

Two kinds, with the same hooks:
- `Replicated`: every rank holds the whole model. One process, or N processes that each run their
  share of the batch and sum the trainable gradients before each step (training/distributed.py).
- `FSDP2` (training/sharding.py): every rank holds 1/N of it; its hooks are where the pitfalls of
  sharding this loop are handled.

The hooks: `refuse` (settings it cannot take), `wrap` (before the optimizer is built), `fillers`
(extra zero-weight passes), `shares_prefix`, `sum_and_clip` (before the optimizer step), `saves`
and `saves_on_interrupt` (who takes part in a checkpoint), `unwrap` (after the last step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hone.training.distributed import Ranks
from hone.training.sharding import FSDP2, is_sharded, sharding_wanted


@dataclass(frozen=True)
class Replicated:
    """The loop's hooks when every rank holds the whole model: nothing to do beyond summing the gradients."""
    team: Ranks = Ranks()
    shares_prefix = True       # a shared prompt prefix may run once per micro-batch (training/batches.py)
    saves_on_interrupt = True  # Ctrl-C checkpoints the step the loop stands at

    @property
    def saves(self) -> bool:
        """Whether this rank takes part in writing a checkpoint: rank 0 alone, the others hold the same weights."""
        return self.team.main

    @staticmethod
    def refuse(cfg) -> None:
        return None

    def wrap(self, model: nn.Module, console) -> dict:
        return {}

    def fillers(self, passes: int) -> int:
        return 0

    def sum_and_clip(self, params: list[nn.Parameter], max_norm: float) -> None:
        self.team.sum_gradients(params)  # a no-op on one process
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def unwrap(self, model: nn.Module, optimizer) -> None:
        return None


Parallel = Replicated | FSDP2


def parallel_for(cfg, team: Ranks, console) -> Parallel:
    """How this run's ranks will share the work (`train.sharding`, accelerate's config); refuses what it cannot take."""
    if cfg.sharding == "fsdp2" and team.world == 1:
        console.print("  [yellow]train.sharding fsdp2 on one process: nothing to shard (train with --nproc N)[/yellow]")
    kind = FSDP2 if sharding_wanted(cfg, team.world) else Replicated
    kind.refuse(cfg)
    return kind(team)


def parallel_of(model: nn.Module, team: Ranks = Ranks()) -> Parallel:
    """How `model`, already wrapped or not, shares the work across `team`."""
    return FSDP2(team) if is_sharded(model) else Replicated(team)
