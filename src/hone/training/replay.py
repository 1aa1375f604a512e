"""Replay: mix a share of general chats into the training data so general skills keep being rehearsed.

The chats ship with hone (src/hone/datasets/general/, written for hone by scripts/make_general_chats.py)
and share no item with the forgetting probe.
"""
from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from hone.data.load import load_chat_records
from hone.data.records import ChatExample


def general_chats_path() -> Path:
    return Path(str(resources.files("hone") / "datasets" / "general" / "chats.jsonl"))


def replay_count(n_train: int, share: float) -> int:
    """General chats to add so they make up `share` of the mixed training set."""
    return round(n_train * share / (1.0 - share)) if share > 0 else 0


def mix_replay(train: list[ChatExample], share: float, seed: int) -> list[ChatExample]:
    """`train` plus general chats making up `share` of the result (seeded; cycles when more are needed)."""
    n = replay_count(len(train), share)
    if n == 0:
        return train
    pool = load_chat_records(general_chats_path())
    rng = random.Random(seed)
    picks: list[ChatExample] = []
    while len(picks) < n:
        batch = list(pool)
        rng.shuffle(batch)
        picks += batch[: n - len(picks)]
    return train + picks
