"""A sweep's time: what its trials have spent, what the next one is expected to take, and how many a budget holds.

Each trial's wall time counts against the sweep's budget, finished or not, over resumes and workers (the study's
`spent_seconds`); the finished trials' measured times (medians) say whether another one fits. `hone plan
--budget` answers the same question before a sweep starts.
"""
from __future__ import annotations

import re
import statistics

from hone.errors import ConfigError, UserError
from hone.sweeps.storage import load_study

# Fixed costs of a trial around its training (model load, rendering, the report), as a share of its training
# time, before any trial has measured them.
FIRST_GUESS_OVERHEAD = 0.3


def add_spent(study, seconds: float) -> None:
    study.set_user_attr("spent_seconds", float(study.user_attrs.get("spent_seconds", 0.0)) + seconds)


def trial_seconds(study) -> tuple[float | None, dict]:
    """The expected wall time of the next trial from the finished ones' measured times (median), and the
    measurements: seconds per optimizer step, steps per trial, fixed cost per trial."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("total_seconds")]
    if not done:
        return None, {}
    totals = [t.user_attrs["total_seconds"] for t in done]
    steps = [t.user_attrs.get("steps") or 0 for t in done]
    per_step = [t.user_attrs["train_seconds"] / s for t, s in zip(done, steps) if s]
    overhead = [t.user_attrs["total_seconds"] - t.user_attrs["train_seconds"] for t in done]
    return statistics.median(totals), {"seconds_per_step": statistics.median(per_step) if per_step else None,
                                       "steps_per_trial": statistics.median(steps),
                                       "overhead_seconds": statistics.median(overhead),
                                       "trial_seconds": statistics.median(totals), "measured_trials": len(done)}


def parse_duration(text: str | None) -> float | None:
    """'30m' -> 1800.0; '90s', '1.5h', '600' (seconds) also; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"--budget {text!r} is not a duration; write e.g. 30m, 90s or 1.5h", field="budget")
    return float(match[1]) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match[2]]


def budget_plan(budget: float, name: str | None = None, estimated_trial: float | None = None) -> dict:
    """How many trials `budget` seconds hold: from the sweep `name`'s measured trials (seconds per step, steps
    and fixed cost per trial), else from `estimated_trial` (the recipe advice's training-time estimate plus
    FIRST_GUESS_OVERHEAD)."""
    if name is not None:
        trial, measured = trial_seconds(load_study(name))
        if trial is None:
            raise UserError(f"sweep {name!r} has no finished trial yet: nothing measured to plan from")
        return {"budget_seconds": budget, "trial_seconds": round(trial, 1), "trials": int(budget // trial),
                "source": f"sweep {name!r}: median of {measured['measured_trials']} measured trials", **measured}
    if estimated_trial is None:
        raise UserError("hone plan --budget needs --sweep NAME (measured trials) or --data FILE (an estimate)")
    trial = estimated_trial * (1 + FIRST_GUESS_OVERHEAD)
    return {"budget_seconds": budget, "trial_seconds": round(trial, 1), "trials": int(budget // trial),
            "source": f"the recipe's training-time estimate + {FIRST_GUESS_OVERHEAD:.0%} for loading and validation"}
