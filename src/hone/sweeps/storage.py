"""Where a sweep's study lives: Optuna's tables inside hone's own database (registry/store.py `database_url()`).

Several `hone sweep` processes and `hone worker --sweeps` processes on one database share a study, each running
one trial at a time: every SQLite transaction takes the write lock when it begins, so one process claims a
queued trial. A trial's heartbeat is its lease; the trials of a process that died (kill -9: its pid is gone, or
its heartbeat stopped) are failed and queued again with their run folders, to resume from their checkpoints.
"""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

from rich.console import Console

from hone.errors import UserError
from hone.registry.store import database_url

PREFIX = "hone-sweep:"            # Optuna study names of hone's sweeps
HEARTBEAT_SECONDS = 30            # a trial's process writes a heartbeat this often ...
GRACE_SECONDS = 120               # ... and another process fails it when none came for this long


def storage():
    """Optuna's RDB storage on hone's database (its tables are studies, trials, trial_* and version_info;
    hone's are runs, tags, model_hashes and serve_*: no name is shared)."""
    import optuna

    url = database_url()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.9; hone relies on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        store = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                           grace_period=GRACE_SECONDS)
    if url.startswith("sqlite"):
        take_write_lock_at_begin(store.engine)
    return store


def take_write_lock_at_begin(engine) -> None:
    """SQLite ignores the SELECT ... FOR UPDATE with which Optuna hands a queued trial to one process: started
    at the same moment, 2 to 4 of 4 processes took trial 0 in 2 of 3 tries (docs/decisions.md). Every transaction
    here takes the write lock when it begins (BEGIN IMMEDIATE, SQLAlchemy's recipe for pysqlite), so a claim or a
    new trial's number is one process's at a time: 0 of 3 tries doubled one."""
    from sqlalchemy import event

    engine.dispose()  # connections opened by the schema check would keep pysqlite's own transaction handling

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def load_study(name: str, create: bool = False, seed: int = 42, pruning: bool = True, store=None):
    """The sweep's Optuna study (`store`: an open storage() to reuse, as a polling worker does)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    # A trial is pruned when its validation loss at a step is worse than the median of the finished trials'
    # at the same step: after 2 trials have finished, and not at the first evaluation (step 0 of reporting).
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if pruning
              else optuna.pruners.NopPruner())
    if create:
        return optuna.create_study(study_name=PREFIX + name, storage=store or storage(), sampler=sampler, pruner=pruner,
                                   direction="minimize", load_if_exists=True)
    try:
        return optuna.load_study(study_name=PREFIX + name, storage=store or storage(), sampler=sampler, pruner=pruner)
    except KeyError:
        raise UserError(f"no sweep {name!r} in {database_url()}; start one with hone sweep --name {name}") from None


def recover_trials(study, console: Console) -> None:
    """Fail the trials whose process died on this host (kill -9) and queue every interrupted or killed trial
    again, with its run folder to resume; trials that failed on an error of their own are not retried."""
    import optuna

    host = socket.gethostname()
    store = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and attrs.get("pid") and not pid_alive(int(attrs["pid"])):
            store.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            console.print(f"  trial {trial.number}: its process {attrs['pid']} is gone (killed); marked failed",
                          highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    retried = set(study.user_attrs.get("retried", []))
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if trial.number in retried or trial.user_attrs.get("error"):
            continue
        resume = trial.user_attrs.get("run_dir")
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "resume_from": resume},
                            skip_if_exists=False)
        requeued.append(trial.number)
    if requeued:
        study.set_user_attr("retried", sorted(retried | set(requeued)))
        console.print(f"  trials {', '.join(map(str, requeued))} stopped before finishing: queued again "
                      "(from their checkpoints)", highlight=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) still answers signal 0
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
