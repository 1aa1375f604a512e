"""Experiment trackers: training curves to TensorBoard, and to W&B or MLflow when installed and asked for.

The loop calls `on_step(record)` with each metrics.jsonl record and `on_end()` once; metrics.jsonl
stays the source of truth (the report reads it), trackers are views of it.
"""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

from hone.errors import ConfigError

KNOWN = ("tensorboard", "wandb", "mlflow")
SCALARS = ("loss", "val_loss", "lr", "tokens_per_s", "epoch")

# Whoever conducts runs from outside them (a sweep's pruner) sees every step record through this, whichever
# loop trains (hone's or the Trainer's: both report through Trackers). An exception it raises stops training.
_WATCHERS: ContextVar[tuple[Callable[[dict], None], ...]] = ContextVar("hone_step_watchers", default=())


@contextmanager
def watching_steps(watcher: Callable[[dict], None]):
    """Inside, `watcher(record)` runs after each logged step of any training run in this context."""
    token = _WATCHERS.set(_WATCHERS.get() + (watcher,))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


def tracker_names(report_to: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' or '' -> []."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    for name in names:
        if name not in KNOWN:
            raise ConfigError(f"train.report_to: unknown tracker {name!r}; use {', '.join(KNOWN)} or none",
                              field="train.report_to")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to asks for {name}, which is not installed: pip install {name} "
                              "(or drop it from train.report_to)", field="train.report_to")
    return names


class Trackers:
    """Fan each step's scalars out to the chosen trackers."""

    def __init__(self, names: list[str], run_dir: Path, config: dict | None = None, name: str | None = None):
        self.sinks = []
        run_dir = Path(run_dir)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            def scalars(values: dict, step: int) -> None:
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, step)

            self.sinks.append((scalars, writer.close))
        if "wandb" in names:
            import wandb

            run = wandb.init(project="hone", name=name or run_dir.name, dir=str(run_dir), config=config or {})
            self.sinks.append((lambda values, step: run.log(values, step=step), run.finish))
        if "mlflow" in names:
            import mlflow

            mlflow.start_run(run_name=name or run_dir.name)
            if config:
                mlflow.log_params(_flatten(config))
            self.sinks.append((lambda values, step: mlflow.log_metrics(values, step=step), mlflow.end_run))

    def on_step(self, record: dict) -> None:
        values = {k: float(record[k]) for k in SCALARS if record.get(k) is not None}
        for log, _close in self.sinks:
            log(values, int(record["step"]))
        for watcher in _WATCHERS.get():
            watcher(record)

    def on_end(self) -> None:
        for _log, close in self.sinks:
            close()


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
