"""Replay: mix a share of earlier chats into the training data so what was learned keeps being rehearsed.

By default the chats are hone's general ones (src/hone/datasets/general/, written for hone by
scripts/make_general_chats.py; they share no item with the forgetting probe). `hone train --continue`
replays the parent run's own training data instead (`train.replay_data`), so the next version keeps
the task it was taught as well as general skills (the default share is measured: docs/decisions.md).
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


def mix_replay(train: list[ChatExample], share: float, seed: int,
               pool: list[ChatExample] | None = None) -> list[ChatExample]:
    """`train` plus chats from `pool` (default hone's general chats) making up `share` of the result
    (seeded; cycles when more are needed)."""
    n = replay_count(len(train), share)
    if n == 0:
        return train
    pool = pool if pool is not None else load_chat_records(general_chats_path())
    rng = random.Random(seed)
    picks: list[ChatExample] = []
    while len(picks) < n:
        batch = list(pool)
        rng.shuffle(batch)
        picks += batch[: n - len(picks)]
    return train + picks
