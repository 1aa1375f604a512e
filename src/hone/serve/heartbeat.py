"""The heartbeat of a job in a worker's hands: lease, progress, and stopping on request.

Every `lease_seconds / 3` it renews the job's lease (only while this worker still holds it and nobody
asked it to stop), turns new lines of the run's metrics.jsonl into `metrics` events and new checkpoint
folders into checkpoint rows. When the job was cancelled or paused, or its lease went to another
worker, it interrupts training with SIGINT, which hone's loop turns into a saved checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from hone.serve import db
from hone.serve.jobs import ACTIVE
from hone.serve.log import say
from hone.serve.settings import ServeSettings


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written right now
    return lines


class Heartbeat(threading.Thread):
    """Renews the job's lease, mirrors training progress into events and checkpoints, stops training on request."""

    def __init__(self, settings: ServeSettings, job: db.Job, token: str):
        super().__init__(daemon=True, name=f"heartbeat-{job.id}")
        self.settings, self.job, self.token = settings, job, token
        self.interval = max(0.2, settings.lease_seconds / 3)
        self.stopped = threading.Event()
        self.reason: str | None = None      # "cancel", "pause" or "lost" once it interrupted training
        self.run_dir: Path | None = None
        self.total_steps: int | None = None  # the run's planned optimizer steps, once known (for the ETA)
        with db.session(settings.db) as s:
            metrics = s.scalars(select(db.Event.data).where(db.Event.job_id == job.id, db.Event.type == "metrics"))
            self.reported = max([int((d or {}).get("step", 0)) for d in metrics], default=0)
            self.saved = set(s.scalars(select(db.Checkpoint.step).where(db.Checkpoint.job_id == job.id)))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a database hiccup: the next beat tries again
                say(job=self.job.id, event="heartbeat-error", error=repr(exc))

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def beat(self) -> None:
        with db.session(self.settings.db) as s:
            kept = s.execute(update(db.Job).where(db.Job.id == self.job.id, db.Job.worker == self.token,
                                                  db.Job.request.is_(None), db.Job.status.in_(ACTIVE))
                             .values(lease_until=time.time() + self.settings.lease_seconds)).rowcount  # type: ignore[attr-defined]  # an UPDATE returns a CursorResult; execute() is typed Result
            s.commit()
            if not kept:
                row = s.scalar(select(db.Job).where(db.Job.id == self.job.id))
                assert row is not None  # jobs are never deleted
                self.reason = "lost" if row.worker != self.token else (row.request or row.status)
        if self.reason:
            self.stopped.set()
            os.kill(os.getpid(), signal.SIGINT)  # hone's loop saves a checkpoint and raises Interrupted
            return
        self.sync_progress()

    def checkpoint_steps(self) -> set[int]:
        folder = (self.run_dir or Path("/nonexistent")) / "checkpoints"
        steps = set()
        for path in folder.glob("*") if folder.is_dir() else []:
            tail = path.name.rsplit("-", 1)[-1]
            if path.name.startswith(("step-", "checkpoint-")) and tail.isdigit():
                steps.add(int(tail))
        return steps

    def sync_progress(self) -> None:
        """New metrics lines -> metrics events; new checkpoint folders -> checkpoint rows."""
        if self.run_dir is None:
            return
        metrics = read_metrics(self.run_dir)
        fresh = [m for m in metrics if m.get("step", 0) > self.reported and "loss" in m]
        new_steps = sorted(self.checkpoint_steps() - self.saved)
        if not fresh and not new_steps:
            return
        with db.session(self.settings.db) as s:
            for m in fresh:
                # OpenAI's keys first; hone's learning rate, speed and time for the dashboard's curves and ETA
                data = {"step": m["step"], "train_loss": m.get("loss"), "valid_loss": m.get("val_loss"),
                        "learning_rate": m.get("lr"), "tokens_per_s": m.get("tokens_per_s"),
                        "epoch": m.get("epoch"), "elapsed_s": m.get("elapsed_s"), "total_steps": self.total_steps}
                text = f"Step {m['step']}: training loss={m['loss']:.4f}"
                if m.get("val_loss") is not None:
                    text += f", validation loss={m['val_loss']:.4f}"
                db.add_event(s, self.job.id, text, "info", "metrics", {k: v for k, v in data.items() if v is not None})
                if m.get("overfitting"):
                    db.add_event(s, self.job.id, f"Overfitting alarm at step {m['step']}: training loss fell while "
                                 "validation loss rose", "warn", "message", {"step": m["step"], "alarm": "overfitting"})
                self.reported = m["step"]
            last = fresh[-1] if fresh else None
            if last and self.total_steps and last.get("elapsed_s"):
                left = max(0, self.total_steps - last["step"]) * last["elapsed_s"] / max(1, last["step"])
                s.execute(update(db.Job).where(db.Job.id == self.job.id)
                          .values(estimated_finish=int(time.time() + left)))
            for step in new_steps:
                upto = [m for m in metrics if m.get("step", 0) <= step]
                losses = [m["loss"] for m in upto if m.get("step") == step and "loss" in m]
                vals = [m["val_loss"] for m in upto if m.get("val_loss") is not None]
                s.add(db.Checkpoint(job_id=self.job.id, step=step, created_at=db.now(),
                                    metrics={"step": float(step), "train_loss": losses[-1] if losses else None,
                                             "valid_loss": vals[-1] if vals else None}))
                self.saved.add(step)
            s.commit()
