"""Watching validation loss: keep the best weights, stop early, raise the overfitting alarm.

Every validation is one observation (step, mean training loss since the previous validation,
validation loss). The watch's state is plain JSON so it travels inside checkpoints and a resumed
run makes the same decisions an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from hone import atomic


@dataclass
class Observation:
    improved: bool           # a new best validation loss
    overfitting: bool        # the alarm is up at this validation


@dataclass
class ValidationWatch:
    patience: int | None            # validations without improvement before stopping; None never stops
    min_delta: float = 0.0          # an improvement must beat the best by more than this
    alarm_after: int = 3            # validations in a row with train loss down and val loss up
    best_loss: float | None = None
    best_step: int | None = None
    stale: int = 0                  # validations since the best
    history: list[list[float]] = field(default_factory=list)  # [step, train loss, val loss]
    alarms: list[int] = field(default_factory=list)           # steps at which the alarm was up

    def observe(self, step: int, train_loss: float, val_loss: float) -> Observation:
        self.history.append([step, train_loss, val_loss])
        improved = self.best_loss is None or val_loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_step, self.stale = val_loss, step, 0
        else:
            self.stale += 1
        overfitting = self._diverging()
        if overfitting:
            self.alarms.append(step)
        return Observation(improved, overfitting)

    def _diverging(self) -> bool:
        recent = self.history[-(self.alarm_after + 1):]
        if len(recent) <= self.alarm_after:
            return False
        pairs = list(zip(recent, recent[1:]))
        return all(b[1] < a[1] and b[2] > a[2] for a, b in pairs)

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "ValidationWatch":
        return cls(**state)


def best_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best"


def save_best(run_dir: Path, model, step: int, val_loss: float) -> None:
    """The trainable weights of the validation-best step, written atomically (sharded: every rank
    gathers, rank 0 writes)."""
    from hone.training.checkpoint import trainable_state
    from hone.training.distributed import ranks

    weights = trainable_state(model)
    if not ranks().main:
        return
    with atomic.folder(best_dir(run_dir)) as tmp:
        save_file(weights, tmp / "trainable.safetensors",
                  metadata={"step": str(step), "val_loss": repr(val_loss)})


def restore_best(run_dir: Path, model) -> bool:
    """Load the validation-best trainable weights into `model`; False when there are none."""
    import torch

    path = best_dir(run_dir) / "trainable.safetensors"
    if not path.is_file():
        return False
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(path).items():
            params[name].copy_(tensor)
    return True
