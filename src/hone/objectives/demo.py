"""`hone demo`: fine-tune the embedded model on the bundled order-extraction data, base vs tuned.

The recipe comes from measurements on the 2-core CPU (docs/demo.md): LoRA r16 on every linear
layer, lr 1e-3, effective batch 8 (64 steps of 8 scored 0.91 where 34 steps of 16 scored 0.84 on the
same number of examples), a wall-clock training budget with warmup and cosine spread over it.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from rich.console import Console

from hone.config import RunConfig, build_config
from hone.objectives import run
from hone.objectives.lifecycle import RunResult

DEMO_TRAIN_SECONDS = 180


def demo_data() -> Path:
    return Path(str(resources.files("hone") / "datasets" / "orders"))


def demo_config(train_seconds: float = DEMO_TRAIN_SECONDS, output: Path | None = None) -> RunConfig:
    data = demo_data()
    return build_config({
        "name": "demo-orders",
        "objective": "sft",  # JSON answers: generation (the advice agrees: structured output, not labels)
        "output": str(output) if output else None,
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                 "test": str(data / "test.jsonl"), "max_length": 256},
        "method": {"name": "lora", "lora_r": 16, "lora_alpha": 32},
        "train": {"lr": 1e-3, "epochs": 3, "time_budget": train_seconds, "batch_size": 8,
                  "micro_batch_size": 8, "eval_every": 1000},
        # The forgetting probe (2 x ~1 min of CPU) would push the demo past its 6-minute budget.
        "eval": {"samples": 4, "forgetting": False},
    }, source="demo")


def run_demo(train_seconds: float = DEMO_TRAIN_SECONDS, output: Path | None = None,
             console: Console | None = None) -> RunResult:
    return run(demo_config(train_seconds, output), console=console)
