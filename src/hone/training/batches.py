"""Batches: a seeded, length-grouped order per epoch, and padding into tensors."""
from __future__ import annotations

import random
from typing import Any

import torch

from hone.data.render import IGNORE, TokenizedExample

# Effective batches are drawn from windows of this many batches sorted by length, so a micro-batch
# holds similar lengths (less padding) while the order across the epoch stays random.
LENGTH_WINDOW = 8
# A shared prefix shorter than this is computed per row. The extra decoder pass that runs it reads every
# weight once, which costs about what ~90 tokens do on the 2-core CPU: the demo's 32-token system prompt
# shared in micro-batches of 4-5 made the benchmark 9% slower; a 140-token one made steps 1.45x faster.
SHARED_PREFIX_MIN = 64


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """Example indices for each optimizer step of one epoch; the same seed and epoch give the same order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * (LENGTH_WINDOW if group_by_length else 1)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        if group_by_length:
            chunk.sort(key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_batches(indices: list[int], micro_batch_size: int, lengths: list[int] | None = None,
                  max_tokens: int | None = None, shared: int = 0) -> list[list[int]]:
    """Consecutive slices of `indices` of at most `micro_batch_size` examples and, given `lengths`, at
    most `max_tokens` padded tokens (examples x the longest one; never fewer than one example). A
    prefix of `shared` tokens that every example has and that runs once (common_prefix) counts once.

    The token cap bounds the activations a forward pass keeps for backward, whatever the lengths:
    they, not the weights, dominate training memory (a LoRA step of 8 x ~140 tokens on the embedded
    model peaked at 3.8 GB, of 4 x ~140 tokens at 2.9 GB)."""
    if lengths is None or max_tokens is None:
        return [indices[i:i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
    chunks: list[list[int]] = []
    chunk: list[int] = []
    longest = 0
    for i in indices:
        wider = max(longest, lengths[i])
        if chunk and (len(chunk) >= micro_batch_size or shared + (len(chunk) + 1) * (wider - shared) > max_tokens):
            chunks.append(chunk)
            chunk, wider = [], lengths[i]
        chunk.append(i)
        longest = wider
    return chunks + [chunk] if chunk else chunks


def collate(examples: list[TokenizedExample], pad_id: int, pad_to_multiple: int = 8) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (rounded up to a multiple, for kernel-friendly shapes)."""
    longest = max(len(e.input_ids) for e in examples)
    width = -(-longest // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_packed(examples: list[TokenizedExample], row_tokens: int = 1024) -> dict[str, torch.Tensor | None]:
    """Examples laid end to end in rows of at most `row_tokens` (longer examples get a row each),
    with position ids restarting at each example and no attention mask: transformers then builds a
    block-diagonal causal mask, so no example attends to another (tested against unpacked losses).
    Rows are right-padded with a dummy example of IGNORE labels.
    """
    rows: list[list[TokenizedExample]] = [[]]
    for example in examples:
        used = sum(len(e.input_ids) for e in rows[-1])
        if rows[-1] and used + len(example.input_ids) > row_tokens:
            rows.append([])
        rows[-1].append(example)
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            ids[r, at:at + n] = torch.tensor(example.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(example.labels[1:])  # never predict across a boundary
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding is one more (ignored) sequence
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": None}


def common_prefix(examples: list[TokenizedExample]) -> int:
    """Leading tokens that every example shares and whose hidden states no trained position reads (the
    first target comes after them), or 0 when too few to be worth a second pass. Any micro-batch drawn
    from `examples` shares at least as many.

    Fine-tuning data often opens every example with the same system prompt: a causal model computes
    those positions identically in each row, so training/loss.py runs them once and lets every row attend
    to that one copy; autograd sums the rows' gradients through it.
    """
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    n = min(len(e.input_ids) for e in examples)
    for e in examples:
        # hidden state j predicts token j + 1: stop before the one that predicts the first target
        n = min(n, next((j - 1 for j, label in enumerate(e.labels) if j and label != IGNORE), n))
        n = next((j for j in range(n) if e.input_ids[j] != first[j]), n)
    return n if n >= SHARED_PREFIX_MIN else 0


def make_batch(examples: list[TokenizedExample], pad_id: int, packing: bool, device: str,
               share_prefix: bool = False) -> dict:
    """Tensors for one micro-batch on `device`, padded or packed; with `share_prefix`, the length of
    the prefix all rows share under "shared_prefix" (see common_prefix)."""
    batch: dict[str, Any] = collate_packed(examples) if packing else collate(examples, pad_id)
    if share_prefix and not packing:
        batch["shared_prefix"] = common_prefix(examples)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
