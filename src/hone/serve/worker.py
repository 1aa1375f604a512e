"""`hone worker`: claims fine-tuning jobs from the database and trains them with hone's objectives.

Claiming is one conditional UPDATE (status claimable and no live lease), so two workers never take
the same job. While it trains, a heartbeat thread (heartbeat.py) renews the lease, mirrors progress into
events and checkpoints, and interrupts training when the job is cancelled or paused. A worker
that dies silently (SIGKILL, power) stops renewing; once its lease runs out another worker claims
the job and resumes it from its last checkpoint in the same run folder.

With `--sweeps`, a worker with no job in hand runs one trial of a sweep started with `hone sweep --workers`
(sweeps/distributed.py): the study is the queue, Optuna's trial heartbeat the lease.
"""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import socket
import time
import uuid
from pathlib import Path

from rich.console import Console
from sqlalchemy import or_, select, update

from hone.errors import Interrupted, UserError
from hone.registry.store import using_database
from hone.serve import db
from hone.serve.heartbeat import Heartbeat, read_metrics
from hone.serve.hyperparameters import resolve
from hone.serve.jobs import ACTIVE, tuned_model_name
from hone.serve.log import say
from hone.serve.settings import ServeSettings
from hone.servicedb import database_url
from hone.sweeps.distributed import SweepTrials


class JobFailed(Exception):
    """The job cannot run: becomes the job's `error` {code, message, param}."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def claimable(now: float):
    free = or_(db.Job.worker.is_(None), db.Job.lease_until < now)
    return or_(db.Job.status.in_(("validating_files", "queued")) & free,
               (db.Job.status == "running") & free)


class Worker:
    def __init__(self, settings: ServeSettings, name: str | None = None, poll_seconds: float = 0.5,
                 sweeps: bool = False):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_seconds = poll_seconds
        self.beat: Heartbeat | None = None  # of the job in hand
        # `--sweeps`: between jobs, trials of sweeps started with `hone sweep --workers` (sweeps/distributed.py)
        self.sweeps = SweepTrials(Console(stderr=True)) if sweeps else None

    def run_forever(self) -> None:
        """Claim and train jobs until SIGTERM or Ctrl-C; a job being trained then goes back to the queue."""
        # The heartbeat stops training with SIGINT to this process. A worker started from a script with `&`,
        # nohup or a supervisor can inherit SIGINT *ignored*: then Python installs no handler and a cancel
        # or pause would be dropped silently (the job trained on to its end). Install the handler ourselves.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        say(worker=self.name, event="started", db=database_url(self.settings.db).split("://")[0])
        while True:
            try:
                claimed = self.claim()
                if claimed:
                    self.work(*claimed)
                elif not self.run_sweep_trial():
                    time.sleep(self.poll_seconds)
            except KeyboardInterrupt:
                if self.beat is not None and self.beat.reason:
                    continue  # our own SIGINT for a cancel or pause, arriving late: keep working
                break
        say(worker=self.name, event="stopped")

    def run_sweep_trial(self) -> bool:
        """One trial of an open sweep, when this worker takes them and one wants a trial; False otherwise."""
        if self.sweeps is None:
            return False
        self.beat = None  # a Ctrl-C now is the user's, not a job heartbeat's cancel
        # sweeps live in the registry's database (HONE_DB); `hone worker --db URL` means that one for everything
        with using_database(self.settings.db):
            return self.sweeps.run_one()

    def claim(self) -> tuple[str, str] | None:
        """(job id, lease token) of a job this worker now holds, or None."""
        with db.session(self.settings.db) as s:
            now = time.time()
            candidates = s.scalars(select(db.Job.id).where(claimable(now)).order_by(db.Job.seq).limit(5)).all()
            for job_id in candidates:
                token = f"{self.name}:{uuid.uuid4().hex[:8]}"
                won = s.execute(update(db.Job).where(db.Job.id == job_id, claimable(now)).values(
                    worker=token, lease_until=now + self.settings.lease_seconds, request=None,
                    attempts=db.Job.attempts + 1)).rowcount  # type: ignore[attr-defined]  # an UPDATE returns a CursorResult; execute() is typed Result
                s.commit()
                if won:
                    return job_id, token
        return None

    # -- one job -------------------------------------------------------------------------------

    def work(self, job_id: str, token: str) -> None:
        with db.session(self.settings.db) as s:
            job = s.get(db.Job, s.scalar(select(db.Job.seq).where(db.Job.id == job_id)))
        assert job is not None  # this worker has just claimed it
        say(worker=self.name, job=job_id, event="claimed", status=job.status, attempt=job.attempts)
        beat = self.beat = Heartbeat(self.settings, job, token)
        beat.start()
        try:
            if job.status == "validating_files":
                n_train = self.validate(job, token)
            else:
                n_train = self.count_examples(job)
            config = self.config(job, token, n_train)
            beat.run_dir = Path(config.output)
            beat.total_steps = planned_steps(config, n_train)
            resume = (beat.run_dir / "run.json").is_file()
            self.set_running(job, token, resume, beat)
            import hone  # the front door, as `hone train` and scripts call it

            hone.train(config, resume=beat.run_dir if resume else None, console=Console(stderr=True))
            beat.stop()
            beat.sync_progress()
            self.succeed(job, token, beat.run_dir)
        except (Interrupted, KeyboardInterrupt) as exc:
            beat.stop()
            step = exc.step if isinstance(exc, Interrupted) else None
            if beat.reason != "lost":
                beat.sync_progress()  # the checkpoint the interrupt just saved, and the last steps
            if beat.reason is None:  # this worker is shutting down: the job goes back to the queue
                # stopped outside a step (saving, the final evaluation): resumed from the last checkpoint
                self.requeue(job, token, step or max(beat.checkpoint_steps(), default=None))
                raise KeyboardInterrupt from None
            say(worker=self.name, job=job_id, event="interrupted", reason=beat.reason, step=step)
            if beat.reason != "lost":
                with db.session(self.settings.db) as s:
                    kept = f"at step {step}; its checkpoint is kept" if step else "before its first step"
                    db.add_event(s, job_id, f"Training stopped ({beat.reason}) {kept}")
                    s.commit()
            self.release(job, token)
        except JobFailed as exc:
            beat.stop()
            self.fail(job, token, exc.code, exc.message, exc.param)
        except UserError as exc:
            beat.stop()
            self.fail(job, token, "invalid_training_config", str(exc), getattr(exc, "field", None))
        except Exception as exc:  # noqa: BLE001 - any crash fails the job with its reason, never silently
            beat.stop()
            say(worker=self.name, job=job_id, event="crashed", error=repr(exc))
            self.fail(job, token, "training_failed", f"Training failed: {type(exc).__name__}: {exc}", None)

    def _update(self, job: db.Job, token: str, event: tuple | None = None, statuses=ACTIVE, **values) -> bool:
        """Change the job only while this worker still holds it and nobody asked it to stop."""
        with db.session(self.settings.db) as s:
            done = s.execute(update(db.Job).where(db.Job.id == job.id, db.Job.worker == token,
                                                  db.Job.request.is_(None), db.Job.status.in_(statuses))
                             .values(**values)).rowcount  # type: ignore[attr-defined]  # an UPDATE returns a CursorResult; execute() is typed Result
            if done and event:
                db.add_event(s, job.id, *event)
            s.commit()
        return bool(done)

    def _file_path(self, file_id: str | None, param: str) -> Path | None:
        if file_id is None:
            return None
        from hone.serve.files import stored_path

        with db.session(self.settings.db) as s:
            row = s.scalar(select(db.File).where(db.File.id == file_id))
        if row is None or not stored_path(row).is_file():
            raise JobFailed(f"invalid_{param}", f"The {param.replace('_', ' ')} {file_id} was deleted.", param)
        return stored_path(row)

    def validate(self, job: db.Job, token: str) -> int:
        """Check the job's files the way OpenAI does before queueing: format, method fit, at least 10 examples."""
        from hone.data.load import load_with_report
        from hone.data.records import ChatExample, PreferenceExample

        wanted = (PreferenceExample,) if job.method["type"] == "dpo" else (ChatExample, PreferenceExample)
        counts = {}
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            path = self._file_path(file_id, param)
            if path is None:
                continue
            try:
                records, report = load_with_report(path)
            except UserError as exc:
                raise JobFailed("invalid_file_format", f"Invalid file format. {exc}", param) from None
            if report.problems:
                first = report.first()
                assert first is not None  # report.problems > 0
                raise JobFailed("invalid_file_format", f"Invalid file format. Line {first.line}: {first.message}",
                                param)
            if not isinstance(records[0], wanted):
                need = ("preference pairs (input, preferred_output, non_preferred_output)"
                        if job.method["type"] == "dpo" else "chat examples (messages)")
                raise JobFailed("invalid_file_format", f"Invalid file format. A {job.method['type']} job needs "
                                f"{need}; {file_id} holds {report.shape} records.", param)
            counts[param] = len(records)
        n = counts["training_file"]
        if n < self.settings.min_examples:
            raise JobFailed("invalid_n_examples", f"Training file has {n} example(s), but must have at least "
                            f"{self.settings.min_examples} examples", "training_file")
        self._update(job, token, ("Files validated, moving job to queued state",), ("validating_files",),
                     status="queued")
        return n

    def count_examples(self, job: db.Job) -> int:
        with db.session(self.settings.db) as s:
            row = s.scalar(select(db.File).where(db.File.id == job.training_file))
        return (row.examples or 1) if row else 1

    def config(self, job: db.Job, token: str, n_train: int):
        """The job as a hone RunConfig: sft or dpo, the server's method, hyperparameters resolved."""
        from hone.config import DEFAULT_LR, build_config

        method = resolve(job.method, n_train)
        job.method = method
        with db.session(self.settings.db) as s:
            s.execute(update(db.Job).where(db.Job.id == job.id, db.Job.worker == token).values(method=method))
            s.commit()
        kind = method["type"]
        hp = method[kind]["hyperparameters"]
        if job.model.startswith("ft:"):
            from hone.serve.catalog import DatabaseCatalog

            parent = DatabaseCatalog(self.settings).resolve(job.org, job.model)
            if parent is None:
                raise JobFailed("model_not_found", f"The model {job.model} was deleted.", "model")
            from hone.methods.artifact import tuned_model_folder

            assert parent.tuned is not None  # a job's model is a tuned one
            base = str(tuned_model_folder(Path(parent.tuned)))  # adapter merged into a copy of its base, once
        elif job.model in self.settings.base_models:
            base = self.settings.base_models[job.model]
        else:
            raise JobFailed("model_not_found", f"The model {job.model} is not offered by this server.", "model")
        batch = int(hp["batch_size"])
        train = {"epochs": hp["n_epochs"], "batch_size": batch, "micro_batch_size": min(batch, 16),
                 "lr": DEFAULT_LR[self.settings.method] * float(hp["learning_rate_multiplier"]),
                 "seed": job.seed, "report_to": "none", "max_steps": self.settings.max_steps,
                 "time_budget": self.settings.time_budget, "save_every": self.settings.save_every}
        data = {"name": job.id, "output": str(db.state_dir("jobs") / job.id),
                "objective": "sft" if kind == "supervised" else "dpo",
                "model": {"name": base}, "method": {"name": self.settings.method},
                "data": {"train": str(self._file_path(job.training_file, "training_file")),
                         "validation": str(self._file_path(job.validation_file, "validation_file") or "") or None},
                "train": {**{k: v for k, v in train.items() if v is not None},
                          **({} if self.settings.early_stopping else {"early_stopping_patience": None})},
                "eval": {"base": False, "forgetting": False}}
        if kind == "dpo":
            data["preference"] = {"beta": float(hp["beta"])}
        return build_config(data, f"job {job.id}")

    def set_running(self, job: db.Job, token: str, resume: bool, beat: "Heartbeat") -> None:
        if resume:
            steps = sorted(beat.checkpoint_steps())
            where = f"from its checkpoint at step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
            message = f"Fine-tuning job resumed by worker {self.name} {where}"
        else:
            message = "Fine-tuning job started"
        values: dict[str, object] = {"status": "running", "run_dir": str(beat.run_dir)}
        if job.started_at is None:
            values["started_at"] = db.now()
        if not self._update(job, token, (message,), ("queued", "running"), **values):
            with db.session(self.settings.db) as s:  # cancelled or paused while its files were checked
                beat.reason = beat.reason or s.scalar(select(db.Job.request).where(db.Job.id == job.id)) or "lost"
            raise KeyboardInterrupt
        job.run_dir = str(beat.run_dir)
        say(worker=self.name, job=job.id, event="running", resume=resume, run_dir=str(beat.run_dir))

    def succeed(self, job: db.Job, token: str, run_dir: Path) -> None:
        from hone.registry.runs import read_record

        record = read_record(run_dir)
        results = record.get("results") or {}
        tokens = results.get("tokens")
        if tokens is None:  # TRL objectives: tokens from the log when it has them
            tokens = sum(int(m.get("num_tokens", 0)) for m in read_metrics(run_dir)[-1:]) or None
        result_file = self.results_file(job, run_dir)
        name = tuned_model_name(job)
        done = self._update(job, token, None, ("running",), status="succeeded", fine_tuned_model=name,
                            finished_at=db.now(), trained_tokens=tokens, result_files=[result_file],
                            worker=None, lease_until=None)
        if done:
            with db.session(self.settings.db) as s:
                if results.get("stopped_by") == "early_stopping":
                    db.add_event(s, job.id, f"Stopped early: validation loss stopped improving; the weights of step "
                                 f"{results.get('best_step')} are kept", "warn", "message",
                                 {"stopped_by": "early_stopping", "best_step": results.get("best_step")})
                db.add_event(s, job.id, f"New fine-tuned model created: {name}")
                db.add_event(s, job.id, "The job has successfully completed")
                s.commit()
        else:  # cancelled or paused after the last step: the request wins, the worker says so and lets go
            with db.session(self.settings.db) as s:
                row = s.scalar(select(db.Job).where(db.Job.id == job.id))
                assert row is not None  # jobs are never deleted
                if row.worker == token:  # not lost to another worker: its holder reports the stop
                    reason = row.request or row.status
                    db.add_event(s, job.id, f"Training stopped ({reason}) after its last step; its checkpoint is kept")
                    s.commit()
            self.release(job, token)
        say(worker=self.name, job=job.id, event="succeeded" if done else "finished-after-stop", model=name)

    def results_file(self, job: db.Job, run_dir: Path) -> str:
        """The step,train_loss,... CSV OpenAI attaches to a job, as a `fine-tune-results` file."""
        from hone import atomic

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
        for m in read_metrics(run_dir):
            writer.writerow([m["step"], m.get("loss", ""), "", m.get("val_loss", ""), ""])
        file_id = db.new_id("file-")
        path = db.state_dir("files") / f"{file_id}.csv"
        atomic.write_text(path, out.getvalue())
        with db.session(self.settings.db) as s:
            s.add(db.File(id=file_id, org=job.org, filename=f"{job.id}-results.csv", stored=path.name,
                          purpose="fine-tune-results", bytes=path.stat().st_size, created_at=db.now()))
            s.commit()
        return file_id

    def fail(self, job: db.Job, token: str, code: str, message: str, param: str | None) -> None:
        done = self._update(job, token, (message, "error"), ACTIVE, status="failed", finished_at=db.now(),
                            error={"code": code, "message": message, "param": param}, worker=None, lease_until=None)
        if not done:
            self.release(job, token)
        say(worker=self.name, job=job.id, event="failed", code=code, message=message)

    def requeue(self, job: db.Job, token: str, step: int | None) -> None:
        where = f"; it resumes from step {step}" if step else ""
        self._update(job, token, (f"Worker {self.name} stopped{where}",), ("running",), status="queued",
                     worker=None, lease_until=None)
        self.release(job, token)
        say(worker=self.name, job=job.id, event="requeued", step=step)

    def release(self, job: db.Job, token: str) -> None:
        with db.session(self.settings.db) as s:
            s.execute(update(db.Job).where(db.Job.id == job.id, db.Job.worker == token)
                      .values(worker=None, lease_until=None, request=None))
            s.commit()


def planned_steps(config, n_train: int) -> int:
    """The optimizer steps a job's run will take (for its ETA): max_steps, else epochs x batches of the
    examples left after the validation hold-out."""
    train = config.train
    if train.max_steps:
        return int(train.max_steps)
    held = 0 if config.data.validation else round(n_train * config.data.validation_fraction)
    return max(1, math.ceil(train.epochs * math.ceil(max(1, n_train - held) / train.batch_size)))
