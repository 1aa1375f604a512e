"""One optimizer step and one validation pass: an effective batch cut into micro-batches, each forward and
backward under autocast, the loss normalised by the trained tokens of the whole batch, gradients summed
across ranks (training/parallel.py). train_loop (loop.py) calls these once per step and per evaluation.
"""
from __future__ import annotations

import contextlib

import torch

from hone.config import TrainSection
from hone.data.render import IGNORE, TokenizedExample
from hone.hardware import Hardware
from hone.training.batches import common_prefix, make_batch, micro_batches
from hone.training.distributed import Ranks, ranks
from hone.training.loss import summed_loss
from hone.training.parallel import parallel_of
from hone.training.regularise import both, kl_to_base

# Padded tokens per forward pass on CPU unless train.micro_batch_tokens says otherwise: activations
# kept for backward grow with them while the speed does not (docs/speed.md).
CPU_MICRO_BATCH_TOKENS = 512


def token_cap(cfg: TrainSection, hw: Hardware) -> int | None:
    return cfg.micro_batch_tokens or (CPU_MICRO_BATCH_TOKENS if hw.device == "cpu" else None)


def loss_tokens(example: TokenizedExample) -> int:
    """Tokens that carry loss: a label at position 0 is never predicted."""
    return sum(label != IGNORE for label in example.labels[1:])


def autocast(hw: Hardware):
    if hw.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(hw.device, dtype=hw.autocast)


@torch.no_grad()
def validation_loss(model, examples: list[TokenizedExample], micro_batch_size: int, pad_id: int,
                    hw: Hardware, head_only: bool = True, packing: bool = False,
                    max_tokens: int | None = None, share_prefix: bool = True) -> float:
    """Mean cross-entropy per trained token over `examples`."""
    was_training = model.training
    model.eval()
    team = ranks()
    parallel = parallel_of(model, team)
    order = team.share(sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids)))
    total, count = 0.0, 0
    lengths = [len(e.input_ids) for e in examples]
    chunks = micro_batches(order, micro_batch_size, lengths, max_tokens)
    share_prefix = share_prefix and parallel.shares_prefix
    for chunk in chunks + [None] * parallel.fillers(len(chunks)):  # None: a pass whose result is dropped
        batch = make_batch([examples[i] for i in chunk or [0]], pad_id, packing, hw.device, share_prefix)
        with autocast(hw):
            loss, n = summed_loss(model, batch, head_only)
        if chunk is not None:
            total, count = total + float(loss), count + n
    model.train(was_training)
    summed_total, summed_count = team.sum(total, count)
    return summed_total / max(1, summed_count)


def train_step(model, optimizer, examples: list[TokenizedExample], cfg: TrainSection, lr: float,
               pad_id: int, hw: Hardware, params: list[torch.nn.Parameter],
               team: Ranks = Ranks(), regularise=None) -> tuple[float, int]:
    """One optimizer step over an effective batch; returns (mean loss per trained token, tokens seen).

    Under data parallelism each rank runs its share of the batch; the loss is still normalised by
    the trained tokens of the whole batch and the gradients are summed, so the step is the same."""
    parallel = parallel_of(model, team)
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_trained = max(1, sum(loss_tokens(e) for e in examples))
    total, seen = 0.0, 0
    order = team.share(list(range(len(examples))))
    regularise = both(kl_to_base(cfg.kl_to_base), regularise)  # None unless one of them is asked for
    lengths = [len(e.input_ids) for e in examples]
    share_prefix = cfg.shared_prefix and parallel.shares_prefix
    shared = common_prefix([examples[i] for i in order]) if share_prefix and not cfg.packing else 0
    chunks = micro_batches(order, cfg.micro_batch_size, lengths, token_cap(cfg, hw), shared)
    for chunk in chunks + [None] * parallel.fillers(len(chunks)):  # None: a zero-weight pass (FSDP2)
        batch = make_batch([examples[i] for i in chunk or [0]], pad_id, cfg.packing, hw.device, share_prefix)
        with autocast(hw):
            loss, _ = summed_loss(model, batch, cfg.head_on_trained_only, regularise)
        if chunk is None:
            (loss * 0.0).backward()
            continue
        (loss / n_trained).backward()
        total += loss.item()
        seen += sum(len(examples[i].input_ids) for i in chunk)
    parallel.sum_and_clip(params, cfg.max_grad_norm)
    summed_total, summed_seen = team.sum(total, seen)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return summed_total / n_trained, int(summed_seen)
