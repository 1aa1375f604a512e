"""`hone sweep`: search the settings that matter within a stated budget, honestly, and resumably.

    resolve the recipe once -> seal the test split -> trials: TPE samples the space, each trial is a normal
    registered run (named after the sweep), validation loss reported at every evaluation (the median pruner
    stops a trial that is clearly worse) -> stop when the trials are done or the budget cannot fit another
    -> unseal: the best trial (by validation loss only) is scored once on the test split -> best.yaml

The study lives in Optuna's tables inside hone's own database (storage.py), so rerunning the same command
resumes it, and several `hone sweep` processes (or machines) on one database share it, each running one
trial at a time. An interrupted trial (Ctrl-C) or a killed one (kill -9: its process is gone, or its
heartbeat stopped) is marked failed and run again from its last checkpoint; a finished trial never runs
twice. What the trials spend and whether another fits the budget: budget.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from hone import atomic
from hone.config import RunConfig, build_config, set_dotted, to_yaml
from hone.data.formats import sealed
from hone.errors import ConfigError, Interrupted, UserError
from hone.home import hone_home, runs_dir
from hone.objectives import on_registered_model, run
from hone.objectives.advice import choose_recipe
from hone.objectives.checks import check_config
from hone.registry.runs import update_record
from hone.sweeps.budget import FIRST_GUESS_OVERHEAD, add_spent, trial_seconds
from hone.sweeps.space import DIMENSIONS, Dimension, pick_space, trial_overrides
from hone.sweeps.storage import load_study, recover_trials
from hone.training.trackers import watching_steps

FAILURES_IN_A_ROW = 3             # trials failing on errors of their own: the sweep stops rather than burn its budget


@dataclass
class SweepOptions:
    name: str
    budget: float | None = None      # seconds of trial time for the whole sweep (over resumes and workers)
    trials: int | None = None        # finished trials the sweep aims at
    space: list[str] | None = None   # dimension names (sweep/space.py); None: the default space
    seed: int = 42
    pruning: bool = True
    workers: bool = False            # trials run on `hone worker --sweeps` processes; this one waits (distributed.py)


def sweep_folder(name: str) -> Path:
    path = hone_home() / "sweeps" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_digest(config: RunConfig) -> str:
    data = config.model_dump(mode="json")
    data.pop("output", None)
    data.pop("recipe", None)  # its reasons carry load-dependent time estimates; the settings it chose are compared
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def trial_config(config: RunConfig, name: str) -> RunConfig:
    """What every trial trains: the resolved recipe without the test split (sealed until selection ends), no
    forgetting probe (not a selection signal; the best model gets it with its test score), named after the sweep."""
    data = config.model_dump(mode="json", exclude_unset=True)
    data["name"] = name
    data.pop("output", None)
    set_dotted(data, "data.test", None)
    set_dotted(data, "eval.forgetting", False)
    set_dotted(data, "train.report_to", "none")
    return build_config(data, "sweep")


def resolve(config: RunConfig, console: Console) -> RunConfig:
    """The recipe the trials share, chosen once (objective auto reads the data here) and checked."""
    config = choose_recipe(on_registered_model(config, console), console)
    check_config(config)
    if not config.data.validation and config.data.validation_fraction == 0:
        raise ConfigError("a sweep selects by validation loss: give --validation FILE or a validation_fraction "
                          "above 0", field="data.validation_fraction")
    return config


@dataclass
class Trials:
    """Where the trials of one `hone sweep` command left the study."""
    study: Any
    config: RunConfig                # the resolved recipe (with its test split)
    test: Path | None
    stopped_by: str


def open_sweep(config: RunConfig, options: SweepOptions, console: Console):
    """The sweep's study, created or resumed: the recipe resolved and checked, the space picked, the same sweep
    as before under this name, the recipe queued as the first trial. Returns (config, space, base, study)."""
    if options.budget is None and options.trials is None:
        raise ConfigError("a sweep needs a limit: --budget (e.g. 30m) and/or --trials N", field="budget")
    config = resolve(config, console)
    space = pick_space(config, options.space)
    base = trial_config(config, options.name)
    study = load_study(options.name, create=True, seed=options.seed, pruning=options.pruning)
    check_same_sweep(study, base, config, space, options)
    if not study.get_trials(deepcopy=False):  # the first trial is the recipe as it stands
        recipe = {d.name: d.current(config) for d in space}
        if all(v is not None for v in recipe.values()):
            study.enqueue_trial(recipe, user_attrs={"recipe": True}, skip_if_exists=True)  # once, when two start
    return config, space, base, study


def run_trials(config: RunConfig, options: SweepOptions, console: Console) -> Trials:
    """Run (or resume) the trials of the sweep `options.name` on `config` until its limits stop it."""
    config, space, base, study = open_sweep(config, options, console)
    recover_trials(study, console)
    test = Path(config.data.test) if config.data.test else None
    console.print(f"[bold]hone sweep[/bold] {options.name}: {', '.join(d.name for d in space)}; "
                  f"{describe_limits(options)}; selection by validation loss"
                  + (f"; {test} sealed until the end" if test else "; no test split"), highlight=False)
    started = time.monotonic()
    stopped_by = ""
    with sealed([test] if test else [], f"the sweep {options.name!r}'s test split: trials select by validation "
                                        "loss and may not read it"):
        while not (stopped_by := why_stop(study, options, console)):
            try:
                run_next_trial(study, base, space, options, console)
            except (Interrupted, KeyboardInterrupt):
                raise Interrupted(0, f"sweep {options.name!r} interrupted; the interrupted trial runs again "
                                     "from its checkpoint when you rerun the same command") from None
    console.print(f"  sweep stopped: {stopped_by} ({time.monotonic() - started:.0f} s in this process)",
                  highlight=False)
    return Trials(study, config, test, stopped_by)


def run_next_trial(study, base: RunConfig, space: list[Dimension], options: SweepOptions, console: Console) -> None:
    """Take the study's next trial (a queued retry first, else the sampler's proposal) and run it here; its time
    counts against the budget, finished or not. `hone sweep` processes and `hone worker --sweeps` both call this."""
    before = time.monotonic()
    try:
        study.optimize(lambda trial: run_trial(trial, base, space, options, study, console), n_trials=1,
                       catch=(UserError,))
    finally:
        add_spent(study, time.monotonic() - before)


def describe_limits(options: SweepOptions) -> str:
    parts = []
    if options.trials:
        parts.append(f"{options.trials} trials")
    if options.budget:
        parts.append(f"budget {options.budget / 60:.1f} min")
    return " and ".join(parts)


def check_same_sweep(study, base: RunConfig, config: RunConfig, space: list[Dimension], options: SweepOptions) -> None:
    """A rerun resumes only the same sweep: the same recipe and space; a changed one needs another --name."""
    digest, names = config_digest(base), [d.name for d in space]
    attrs = study.user_attrs
    if "config_digest" not in attrs:
        study.set_user_attr("config_digest", digest)
        study.set_user_attr("space", names)
        study.set_user_attr("config", config.model_dump(mode="json"))
        study.set_user_attr("default_lr", config.lr)
        study.set_user_attr("spent_seconds", 0.0)
        return
    if attrs["config_digest"] != digest or attrs.get("space") != names:
        what = "search space" if attrs.get("config_digest") == digest else "configuration or data"
        raise ConfigError(f"sweep {options.name!r} was started with another {what}; rerun it with the same "
                          "settings to resume it, or pass a new --name", field="name")


def why_stop(study, options: SweepOptions, console: Console) -> str:
    """'' while another trial should start; else why not (trials done, budget spent or too small for one)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # a trial that failed on an error of its own is over (not retried); an interrupted one runs again
    errors = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error")]
    finished = sum(t.state in done for t in trials) + len(errors)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    if options.trials is not None and finished + running >= options.trials:
        return f"{finished} trials finished" + (f", {running} running elsewhere" if running else "")
    failed = {t.number for t in errors}
    ended = [t.number for t in trials if t.state in done or t.number in failed]
    if len(ended) >= FAILURES_IN_A_ROW and set(ended[-FAILURES_IN_A_ROW:]) <= failed:
        return f"the last {FAILURES_IN_A_ROW} trials failed ({errors[-1].user_attrs['error']})"
    if options.budget is not None:
        spent = float(study.user_attrs.get("spent_seconds", 0.0))
        left = options.budget - spent
        expected, _ = trial_seconds(study)
        if left <= 0:
            return f"budget spent ({spent:.0f} of {options.budget:.0f} s)"
        if expected is not None and expected > left:
            return (f"{left:.0f} s of the budget left, a trial takes ~{expected:.0f} s (median of the measured "
                    "trials)")
    return ""


def run_trial(trial, base: RunConfig, space: list[Dimension], options: SweepOptions, study, console: Console) -> float:
    """One trial: a normal registered run of `base` with the trial's settings; its value is the best
    validation loss. Validation losses go to the pruner as they are measured."""
    import optuna

    values = trial_overrides(trial, base, space)
    data = base.model_dump(mode="json", exclude_unset=True)
    for key, value in values.items():
        set_dotted(data, key, value)
    if options.budget is not None:  # a trial never runs past what is left of the budget
        left = options.budget - float(study.user_attrs.get("spent_seconds", 0.0))
        _, measured = trial_seconds(study)
        overhead = measured.get("overhead_seconds") or FIRST_GUESS_OVERHEAD * left
        budget = max(1.0, left - overhead)
        if base.train.time_budget is None or base.train.time_budget > budget:
            set_dotted(data, "train.time_budget", round(budget, 1))
    resume_from = trial.user_attrs.get("resume_from")
    run_dir = Path(resume_from) if resume_from and (Path(resume_from) / "config.yaml").is_file() else None
    if run_dir is None:
        set_dotted(data, "output", str(runs_dir() / f"sweep-{safe(options.name)}-trial-{trial.number:03d}"))
    cfg = build_config(data, "sweep trial")
    cfg = cfg.model_copy(update={"recipe": base.recipe})
    folder = run_dir or Path(cfg.output)  # type: ignore[arg-type]
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("run_dir", str(folder))
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    console.print(f"[bold]trial {trial.number}[/bold] {shown}" + (f" (resuming {folder.name})" if run_dir else ""),
                  highlight=False)
    reported: list[int] = []

    def report(record: dict) -> None:
        if record.get("val_loss") is None:
            return
        step = int(record["step"])
        trial.report(float(record["val_loss"]), step)
        reported.append(step)
        if len(reported) > 1 and trial.should_prune():
            raise optuna.TrialPruned(f"validation loss {record['val_loss']:.4f} at step {step} is worse than "
                                     "the median of the finished trials at that step")

    started = time.monotonic()
    try:
        with watching_steps(report):
            result = run(cfg, run_dir=run_dir, console=console)
    except optuna.TrialPruned as pruned:
        update_record(folder, status="pruned", sweep={"name": options.name, "trial": trial.number},
                      pruned=str(pruned))
        trial.set_user_attr("total_seconds", round(time.monotonic() - started, 2))
        console.print(f"  trial {trial.number} pruned: {pruned}", highlight=False)
        raise
    except UserError as exc:
        trial.set_user_attr("error", str(exc))
        console.print(f"  [red]trial {trial.number} failed:[/red] {exc}", highlight=False)
        raise
    value = result.losses.get("best_val_loss", result.losses.get("val_loss"))
    if value is None:
        raise UserError("the trial measured no validation loss; a sweep needs validation data")
    update_record(result.run_dir, sweep={"name": options.name, "trial": trial.number, "value": value})
    trial.set_user_attr("run_dir", str(result.run_dir))
    trial.set_user_attr("steps", result.steps)
    trial.set_user_attr("train_seconds", round(result.train_seconds, 2))
    trial.set_user_attr("total_seconds", round(time.monotonic() - started, 2))
    trial.set_user_attr("stopped_by", result.stopped_by)
    console.print(f"  trial {trial.number} finished: best validation loss {value:.4f} "
                  f"({result.steps} steps, {time.monotonic() - started:.0f} s)", highlight=False)
    return float(value)


def safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "sweep"


def write_best_config(config: RunConfig, params: dict, space: list[Dimension], folder: Path) -> Path:
    """best.yaml: the sweep's recipe with the best trial's settings and the test split back, for `hone train`."""
    data = config.model_dump(mode="json", exclude_unset=True)
    data.pop("output", None)
    fields = {d.name: d.field for d in space}
    for name, value in params.items():
        if name in fields:
            set_dotted(data, fields[name], value)
    best = build_config(data, "sweep")
    best = best.model_copy(update={"recipe": config.recipe})
    path = folder / "best.yaml"
    atomic.write_text(path, to_yaml(best))
    return path


def space_of(study) -> list[Dimension]:
    return [DIMENSIONS[n] for n in study.user_attrs.get("space", []) if n in DIMENSIONS]


def trial_rows(study) -> list[dict]:
    """Each trial as `hone sweep --json` lists it: number, state, value, params, and its run and times."""
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                     "run_dir": t.user_attrs.get("run_dir"), "steps": t.user_attrs.get("steps"),
                     "seconds": t.user_attrs.get("total_seconds"), "retry_of": t.user_attrs.get("retry_of"),
                     "error": t.user_attrs.get("error")})
    return rows


