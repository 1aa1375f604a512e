"""A sweep's trials on `hone worker`s: one trial per worker at a time, on any machine sharing the database.

    hone sweep --workers: open the sweep (the recipe resolved once, stored in the study) -> mark it open to
    workers with its limits -> wait, printing each trial as it ends -> selection, the test split read once
    hone worker --sweeps: (no fine-tuning job waiting) -> the oldest open sweep that wants a trial -> its
    stopped trials queued again -> one trial through study.run_next_trial, the function `hone sweep` runs

There is no second queue: the study in hone's database is the queue, as it is for several `hone sweep`
processes. Optuna hands a queued trial to exactly one process (WAITING -> RUNNING is a conditional update) and
numbers new ones; its heartbeat (every 30 s, storage.HEARTBEAT_SECONDS) is the trial's lease. A worker that dies
leaves its trial RUNNING; the next worker to look fails it (on the same host at once, its pid being gone; from
another host after 120 s without a heartbeat, storage.GRACE_SECONDS) and queues it again with its run folder, so
it resumes from its last checkpoint. A worker needs the recipe's files at the same paths (one machine, or a
shared filesystem); one that cannot read them leaves the sweep to others.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from hone.config import RunConfig, build_config
from hone.data.formats import sealed
from hone.errors import Interrupted, UserError
from hone.sweeps.storage import PREFIX, load_study, recover_trials, storage
from hone.sweeps.study import (
    SweepOptions,
    Trials,
    config_digest,
    describe_limits,
    open_sweep,
    run_next_trial,
    space_of,
    trial_config,
    why_stop,
)

OPEN = "workers"          # the study's user attribute that opens it to workers: the sweep's limits
POLL_SECONDS = 2.0        # how often `hone sweep --workers` looks at the study while it waits


def wait_for_workers(config: RunConfig, options: SweepOptions, console: Console,
                     poll_seconds: float = POLL_SECONDS) -> Trials:
    """`hone sweep --workers`: open the sweep to `hone worker --sweeps` and wait until its limits stop it and no
    trial runs. Ctrl-C stops the waiting, not the workers; the same command waits again."""
    import optuna

    config, space, _, study = open_sweep(config, options, console)
    study.set_user_attr(OPEN, {"budget": options.budget, "trials": options.trials, "seed": options.seed,
                               "pruning": options.pruning})
    test = Path(config.data.test) if config.data.test else None
    console.print(f"[bold]hone sweep[/bold] {options.name}: {', '.join(d.name for d in space)}; "
                  f"{describe_limits(options)}; trials run on `hone worker --sweeps` processes sharing this "
                  "database, one trial each; waiting", highlight=False)
    shown: set[int] = set()
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state not in live and t.number not in shown:
                    shown.add(t.number)
                    value = f" value {t.value:.4f}" if t.value is not None else ""
                    console.print(f"  trial {t.number} {t.state.name.lower()}{value} (worker pid "
                                  f"{t.user_attrs.get('pid')} on {t.user_attrs.get('host')})", highlight=False)
            stopped_by = why_stop(study, options, console)
            if stopped_by and not any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        raise Interrupted(0, f"stopped waiting for sweep {options.name!r}; its workers go on; the same command "
                             "waits again") from None
    console.print(f"  sweep stopped: {stopped_by}", highlight=False)
    return Trials(study, config, test, stopped_by)


class SweepTrials:
    """What `hone worker --sweeps` does between fine-tuning jobs: run one trial of an open sweep."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.store = None           # one storage for the worker's life: opening one costs a schema check
        self.skipped: set[str] = set()  # sweeps this worker cannot run (said once)

    def open_sweeps(self) -> list[tuple[str, dict]]:
        """(name, user attributes) of the sweeps open to workers and not yet scored on their test split, oldest
        first."""
        import optuna

        store = self.store = self.store or storage()
        summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
        return [(s.study_name[len(PREFIX):], s.user_attrs) for s in sorted(summaries, key=lambda s: s._study_id)
                if s.study_name.startswith(PREFIX) and s.user_attrs.get(OPEN) and "test" not in s.user_attrs]

    def run_one(self) -> bool:
        """Run one trial of the oldest open sweep that wants one; False when none does."""
        for name, attrs in self.open_sweeps():
            if name in self.skipped:
                continue
            limits = attrs[OPEN]
            options = SweepOptions(name, limits["budget"], limits["trials"], attrs.get("space"), limits["seed"],
                                   limits["pruning"])
            study = load_study(name, seed=options.seed, pruning=options.pruning, store=self.store)
            recover_trials(study, self.console)
            if why_stop(study, options, self.console):
                continue
            config = self.recipe(name, attrs)
            if config is None:
                continue
            test = Path(config.data.test) if config.data.test else None
            try:
                with sealed([test] if test else [], f"the sweep {name!r}'s test split: trials select by "
                                                    "validation loss and may not read it"):
                    run_next_trial(study, trial_config(config, name), space_of(study), options, self.console)
            except Interrupted:
                self.console.print(f"  sweep {name!r}: this worker's trial was interrupted; it runs again from "
                                   "its checkpoint on the next worker to look", highlight=False)
                raise KeyboardInterrupt from None
            return True
        return False

    def recipe(self, name: str, attrs: dict) -> RunConfig | None:
        """The sweep's resolved recipe as `hone sweep` stored it, or None (said once) when this worker cannot run
        it: another hone's configuration, or files it cannot read."""
        why = ""
        try:
            config = build_config(attrs["config"], f"sweep {name!r}")
            if config_digest(trial_config(config, name)) != attrs.get("config_digest"):
                why = "its stored recipe reads differently with this worker's hone (another version?)"
        except UserError as exc:
            why = f"its stored recipe does not load here: {exc}"
        if not why:
            missing = [p for p in (config.data.train, config.data.validation) if p and not Path(p).exists()]
            why = f"{missing[0]} is not on this machine (workers need the recipe's files at the same paths)" \
                if missing else ""
        if why:
            self.skipped.add(name)
            self.console.print(f"  sweep {name!r} left to other workers: {why}", highlight=False)
            return None
        return config
