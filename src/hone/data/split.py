"""Seeded splits: `hold_out` for a validation share in memory, `split_dataset` for files on disk.

`split_dataset` streams twice over the input, so it runs in bounded memory on multi-GB files:
pass 1 groups near-duplicates (MinHash, data/neardup.py) and reads labels; groups are then dealt
to train/validation/test per label (stratified), whole groups at a time, so no near-duplicate pair
straddles two splits; pass 2 writes each record, in the user's own shape, to its split's file.
A manifest (split.json) records sizes, seed and each split's content fingerprint for lineage.
"""
from __future__ import annotations

import json
import random
from array import array
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from hone import atomic
from hone.data.content import Fingerprint, full_text, label_of
from hone.data.load import iter_records, iter_records_with_raw
from hone.data.neardup import NearDuplicates
from hone.data.problems import ValidationReport
from hone.errors import DataError, UserError

T = TypeVar("T")
NAMES = ("train", "validation", "test")


def hold_out(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(kept, held out): a seeded random `fraction` of `items` held out, at least one when fraction > 0."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(items) * fraction))
    held = set(order[:n])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def parse_sizes(text: str) -> tuple[float, float, float]:
    """'80/10/10' or '0.8,0.1,0.1' -> fractions summing to 1."""
    parts = text.replace(",", "/").split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] == 0:
        raise UserError(f"--sizes expects three non-negative shares like 80/10/10 (train > 0), got {text!r}")
    total = sum(values)
    train, validation, test = (v / total for v in values)
    return train, validation, test


def assign_groups(groups: np.ndarray, labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Split index (0, 1, 2) per record: whole groups dealt in turn to the split furthest below its share.

    Groups are dealt stratum by stratum (each stratum's groups shuffled), so every label spreads over
    the splits in proportion, and rare labels still add up to the right global sizes.
    """
    roots, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    group_label = np.zeros(len(roots), dtype=labels.dtype)
    group_label[inverse[::-1]] = labels[::-1]  # each group takes the label of its first record
    rng = random.Random(seed)
    order: list[int] = []
    for stratum in np.unique(group_label).tolist():
        members = np.nonzero(group_label == stratum)[0].tolist()
        rng.shuffle(members)
        order += members
    choice = np.zeros(len(roots), dtype=np.int8)
    filled, dealt = [0] * len(fractions), 0
    for g in order:
        dealt += int(sizes[g])
        k = max(range(len(fractions)), key=lambda i: (fractions[i] * dealt - filled[i], -i))
        choice[g] = k
        filled[k] += int(sizes[g])
    return choice[inverse]


@dataclass
class SplitResult:
    out_dir: Path
    manifest: dict


def split_dataset(path: Path, out_dir: Path | None = None, sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 42, shape: str | None = None, strict: bool = False, near: bool = True,
                  stratify: bool = True) -> SplitResult:
    """Split one data file into train/validation/test JSONL files with a manifest beside them."""
    path = Path(path)
    out_dir = Path(out_dir) if out_dir else path.parent / f"{path.stem}-split"
    if out_dir.resolve() == path.resolve():
        raise UserError("the output folder is the input itself; pass another --output", file=str(path))

    # Pass 1: near-duplicate groups and labels, a few bytes per record.
    report = ValidationReport()
    index = NearDuplicates() if near else None
    label_ids: dict[str, int] = {}
    labels = array("q")
    count = 0
    for record in iter_records(path, shape, strict, report):
        if index:
            index.add(full_text(record))
        label = label_of(record) if stratify else None
        labels.append(label_ids.setdefault(label, len(label_ids)) if label is not None else -1)
        count += 1
    if not count:
        raise DataError(f"no valid examples to split ({report.summary_line()})", file=str(path))
    groups = index.groups() if index else np.arange(count)
    if index:
        index.close()
    assignment = assign_groups(groups, np.frombuffer(labels, dtype=np.int64),
                               sizes, seed)

    # Pass 2: each record, in the user's own shape, to its split's file (each written atomically).
    targets = {name: out_dir / f"{name}.jsonl" for name, share in zip(NAMES, sizes) if share > 0}
    prints = {name: Fingerprint() for name in targets}
    label_counts: dict[str, dict[str, int]] = {name: {} for name in targets}
    with ExitStack() as stack:
        handles = {name: stack.enter_context(atomic.writer(target)) for name, target in targets.items()}
        for i, (record, raw) in enumerate(iter_records_with_raw(path, shape, False, ValidationReport())):
            name = NAMES[assignment[i]]
            handles[name].write(json.dumps(raw, ensure_ascii=False, default=str) + "\n")
            prints[name].add(record)
            if (label := label_of(record)) is not None:
                label_counts[name][label] = label_counts[name].get(label, 0) + 1
    multi = np.unique(groups, return_counts=True)[1]
    manifest = {
        "source": str(path), "seed": seed, "sizes": dict(zip(NAMES, sizes)),
        "stratified_by": "label" if stratify and label_ids else None,
        "near_duplicates_kept_together": int((multi > 1).sum()) if near else None,
        "records": count, "skipped": report.skipped, "problems": dict(report.counts),
        "splits": {name: {"file": targets[name].name, "records": prints[name].count,
                          "fingerprint": prints[name].hexdigest(),
                          **({"labels": label_counts[name]} if label_counts[name] else {})} for name in targets}}
    atomic.write_json(out_dir / "split.json", manifest)
    return SplitResult(out_dir, manifest)
