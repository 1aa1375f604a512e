"""Shared by the objective tests: tiny data files, a config on the tiny model, and a spy on the saved model."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from hone.config import build_config

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS[:4]) for _ in range(24))} for _ in range(n)]


def label_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["good", "bad"])
        word = rng.choice(["great", "lovely", "perfect"] if label == "good" else ["broken", "late", "awful"])
        rows.append({"text": f"the parcel was {word}", "label": label})
    return rows


def tag_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"tokens": [rng.choice(["Maria", "James", "Wei"]), "ordered", str(rng.randint(1, 9)),
                        rng.choice(["mugs", "lamps"])], "tags": ["B-PER", "O", "B-QTY", "B-ITEM"]} for _ in range(n)]


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(WORDS)
        rows.append({"prompt": f"Say {word}", "chosen": word, "rejected": f"{word[::-1]} no no"})
    return rows


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
            for w in (rng.choice(WORDS) for _ in range(n))]


def tiny_run_config(tiny_model, tmp_path, objective: str, data_file: Path, **sections):
    """A config on the tiny model: fp32 (so the trained model and its reload match exactly), a few steps."""
    data = {"train": str(data_file), "max_length": 64, **sections.pop("data", {})}
    return build_config({
        "objective": objective, "model": {"name": str(tiny_model)}, "output": str(tmp_path / f"run-{objective}"),
        "data": data, "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8, **sections.pop("method", {})},
        "train": {"lr": 1e-2, "max_steps": 6, "batch_size": 8, "micro_batch_size": 8, "threads": 1,
                  "precision": "fp32", "warmup_ratio": 0.0, **sections.pop("train", {})},
        **sections})


class SavedModelSpy:
    """Wraps an objective module's save_artifact to keep the model object that was saved."""

    def __init__(self, monkeypatch, module):
        self.model = None
        original = module.save_artifact

        def spy(model, tokenizer, run_dir, method):
            self.model = model
            return original(model, tokenizer, run_dir, method)

        monkeypatch.setattr(module, "save_artifact", spy)


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l)[key] for l in lines if key in json.loads(l)]


def falls(values: list[float]) -> bool:
    k = max(1, len(values) // 3)
    return sum(values[-k:]) / k < sum(values[:k]) / k


PROBE = torch.tensor([[1, 500, 600, 700, 800, 900]])


@torch.no_grad()
def logits(model, ids=PROBE):
    model.eval()
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def shorter_is_better(completions, **kwargs) -> list[float]:
    """A grpo reward a random tiny model's samples differ on (their length), so the policy gets a gradient."""
    from hone.objectives.rewards import completion_text

    return [-len(completion_text(c)) / 10 for c in completions]
