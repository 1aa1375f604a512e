"""The search space of a sweep: one table of dimensions, the default selection per method and objective.

A dimension names the config field it sets and how Optuna samples it. The learning rate is searched
log-uniformly from a tenth to ten times the recipe's rate (the method's default unless the advice or the user
chose one; hone's own demo moved from 0.60 to 0.88 exact match between 2e-4 and 1e-3, field notes §11: a decade
each side covers that and more). The first trial of a sweep is the recipe itself, so the sweep's best is never
a worse validation loss than the recipe's. `--space lr,epochs`
picks dimensions by name; one that does not apply to the method or objective is refused in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hone.config import RunConfig
from hone.errors import ConfigError

LORA_FAMILY = ("lora", "dora", "qlora")
PREFERENCE = ("dpo", "orpo", "simpo")


@dataclass(frozen=True)
class Dimension:
    name: str                        # what --space calls it
    field: str                       # the config field it sets (section.field)
    kind: str                        # "log" (float, log-uniform), "float", "int" or "choice"
    low: float = 0.0                 # log/float/int: bounds; log: as multiples of the method's default lr
    high: float = 0.0
    choices: tuple = ()
    methods: tuple[str, ...] = ()    # empty: every method
    objectives: tuple[str, ...] = ()  # empty: every objective
    describe: str = ""

    def applies(self, method: str, objective: str) -> bool:
        return (not self.methods or method in self.methods) and (not self.objectives or objective in self.objectives)

    def bounds(self, config: RunConfig) -> tuple[float, float]:
        if self.kind == "log":  # around the recipe's rate: the method's default unless the advice or the user chose
            return config.lr * self.low, config.lr * self.high
        return self.low, self.high

    def current(self, config: RunConfig) -> Any:
        """The recipe's own value of this dimension, when the space holds it (the sweep's first trial)."""
        section, _, name = self.field.partition(".")
        value = getattr(getattr(config, section), name)
        if self.name == "lr":
            value = config.lr
        if self.kind == "choice":
            return value if value in self.choices else None
        low, high = self.bounds(config)
        return value if value is not None and low <= value <= high else None

    def sample(self, trial, config: RunConfig) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        low, high = self.bounds(config)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high))
        return trial.suggest_float(self.name, low, high, log=self.kind == "log")


DIMENSIONS = {d.name: d for d in [
    Dimension("lr", "train.lr", "log", 0.1, 10.0,
              describe="peak learning rate, log-uniform 0.1x-10x the method's default"),
    Dimension("epochs", "train.epochs", "int", 1, 5, describe="passes over the training data, 1-5"),
    Dimension("warmup", "train.warmup_ratio", "float", 0.0, 0.2, describe="share of training warming up, 0-0.2"),
    Dimension("batch_size", "train.batch_size", "choice", choices=(4, 8, 16), describe="effective batch, 4/8/16"),
    Dimension("weight_decay", "train.weight_decay", "choice", choices=(0.0, 0.01, 0.1), describe="AdamW weight decay"),
    Dimension("lora_r", "method.lora_r", "choice", choices=(4, 8, 16, 32), methods=LORA_FAMILY,
              describe="LoRA rank, 4/8/16/32"),
    Dimension("lora_alpha", "method.lora_alpha", "choice", choices=(8, 16, 32, 64), methods=LORA_FAMILY,
              describe="LoRA scale numerator, 8/16/32/64"),
    Dimension("lora_dropout", "method.lora_dropout", "choice", choices=(0.0, 0.05, 0.1), methods=LORA_FAMILY,
              describe="dropout on the LoRA input"),
    Dimension("beta", "preference.beta", "float", 0.05, 0.5, objectives=PREFERENCE,
              describe="preference strength (DPO's KL weight), 0.05-0.5"),
]}

# What a sweep searches when --space is not given: the learning rate always, epochs and warmup, and rank and
# alpha for the LoRA family; beta for preference objectives.
DEFAULT_SPACE = ("lr", "epochs", "warmup", "lora_r", "lora_alpha", "beta")


def pick_space(config: RunConfig, names: list[str] | None) -> list[Dimension]:
    """The dimensions to search: `names` (refused one by one where they cannot apply) or the defaults."""
    method, objective = config.method.name, config.objective
    if not names:
        return [DIMENSIONS[n] for n in DEFAULT_SPACE if DIMENSIONS[n].applies(method, objective)]
    picked = []
    for name in names:
        if name not in DIMENSIONS:
            raise ConfigError(f"unknown dimension {name!r}; --space takes {', '.join(DIMENSIONS)}", field="space")
        dim = DIMENSIONS[name]
        if not dim.applies(method, objective):
            where = ", ".join(dim.methods or dim.objectives)
            raise ConfigError(f"dimension {name!r} applies only to {where}; this sweep trains "
                              f"{objective} with {method}", field="space")
        picked.append(dim)
    return picked


def parse_space(text: str | None) -> list[str] | None:
    """'lr, epochs,lora_r' -> ['lr', 'epochs', 'lora_r']; None or '' -> None (the default space)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def trial_overrides(trial, config: RunConfig, space: list[Dimension]) -> dict[str, Any]:
    """{config field: value} for one trial."""
    return {dim.field: dim.sample(trial, config) for dim in space}
