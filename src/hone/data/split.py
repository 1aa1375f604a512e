"""Seeded splits. (The data issue adds stratified train/validation/test splits written to disk.)"""
from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def hold_out(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(kept, held out): a seeded random `fraction` of `items` held out, at least one when fraction > 0."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(items) * fraction))
    held = set(order[:n])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
