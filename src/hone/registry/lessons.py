"""What sweeps taught about a dataset, kept for the next run on the same (or nearly the same) data.

A sweep whose best learning rate is far from the recipe's (more than FAR times either way) records a lesson
keyed by the training file's fingerprint: its sha256, and a MinHash of its lines so that a grown or edited
copy (Jaccard >= NEAR on lines) still finds it. The recipe advice (objectives/advice.py) shows the lesson
the next time such data is trained. Lessons live in <hone home>/lessons.json, one entry per sweep.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from hone import atomic
from hone.home import hone_home
from hone.registry.fingerprint import file_sha256

FAR = 3.0          # best / default learning rate beyond this (or below 1/FAR) is worth telling
NEAR = 0.7         # estimated Jaccard similarity of the files' line sets that counts as the same data
PERMUTATIONS = 64


def lessons_path() -> Path:
    return hone_home() / "lessons.json"


def line_signature(path: Path) -> list[int]:
    """A MinHash of the file's distinct lines (datasketch), as plain integers."""
    from datasketch import MinHash

    sketch = MinHash(num_perm=PERMUTATIONS, seed=1)
    with Path(path).open("rb") as handle:
        for line in handle:
            if line.strip():
                sketch.update(line.strip())
    return [int(v) for v in sketch.hashvalues]


def similarity(a: list[int], b: list[int]) -> float:
    if not a or len(a) != len(b):
        return 0.0
    return sum(x == y for x, y in zip(a, b)) / len(a)


def read_lessons() -> list[dict]:
    path = lessons_path()
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def record_lesson(train: Path, sweep: str, best_lr: float, default_lr: float, objective: str,
                  method: str) -> dict | None:
    """Keep the lesson when `best_lr` is FAR from `default_lr`; returns it (None when the default was close)."""
    ratio = best_lr / default_lr
    if 1 / FAR <= ratio <= FAR:
        return None
    lesson = {"sweep": sweep, "data": str(Path(train).resolve()), "sha256": file_sha256(train),
              "signature": line_signature(train), "best_lr": best_lr, "default_lr": default_lr,
              "ratio": round(ratio, 2), "objective": objective, "method": method,
              "recorded": time.strftime("%Y-%m-%d")}
    kept = [entry for entry in read_lessons() if entry.get("sweep") != sweep]
    atomic.write_text(lessons_path(), json.dumps(kept + [lesson], indent=1))
    return lesson


def lesson_for(train: Path, method: str) -> tuple[dict, float] | None:
    """The newest lesson for this data file and method, with how similar the data is (1.0: the same file)."""
    lessons = [entry for entry in read_lessons() if entry.get("method") == method]
    if not lessons or not Path(train).is_file():
        return None
    digest = file_sha256(train)
    exact = [entry for entry in lessons if entry["sha256"] == digest]
    if exact:
        return exact[-1], 1.0
    signature = line_signature(train)
    near = [(entry, similarity(signature, entry["signature"])) for entry in lessons]
    near = [(entry, s) for entry, s in near if s >= NEAR]
    return near[-1] if near else None
