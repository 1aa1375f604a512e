"""Data parallelism across processes (torchrun, `hone train --nproc N`): each rank trains on its
share of every effective batch and the trainable gradients are summed across ranks before each
optimizer step, so N processes take exactly the step one process would take on the whole batch.

Plain all-reduce of the trainable gradients rather than a DDP wrapper: hone's loss reaches the
decoder and the output layer separately (the head runs only on trained positions), which bypasses
a wrapper's forward; with LoRA the reduced tensors are small. CPU ranks use gloo, GPU ranks NCCL.
Pitfall measured here: runs ending on a collective abort at exit about a quarter of the time unless
the process group is destroyed, so `close()` always runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's share of `items` (every rank sees the same list)."""
        return items[self.rank::self.world]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        at = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[at:at + n].view_as(p).to(p.dtype)
            at += n

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def per_rank(self, value: int) -> list[int]:
        """Every rank's `value`, in rank order, on every rank."""
        return [int(v) for v in self.sum(*[float(value) * (i == self.rank) for i in range(self.world)])]

    def from_main(self, value):
        """`value` as rank 0 has it, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait(self) -> None:
        if self.world > 1:
            dist.barrier()


def ranks() -> Ranks:
    """This process's place in a torchrun/accelerate launch (a single process when not launched)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or _closed:
        return Ranks()  # after close(), what is left runs on rank 0 alone
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks(dist.get_rank(), dist.get_world_size(), dist.get_backend())


_closed = False


def close() -> None:
    global _closed
    if dist.is_initialized():
        dist.destroy_process_group()
        _closed = True
