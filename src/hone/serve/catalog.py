"""The models an org may use: the server's base models and the org's succeeded fine-tunes.

inference.py (part B) serves what this resolves. `tuned` is the plain model folder of a tuned run
(hone.train.run.tuned_model_folder: the adapter merged into a copy of its base, or model/ for full
fine-tuning); `adapter` is the run's own adapter folder, for serving many adapters over one base.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update

from hone.serve import db
from hone.serve.settings import ServeSettings


@dataclass(frozen=True)
class ModelSource:
    """What inference needs to load a model."""
    id: str                   # the OpenAI model id: "ft:tiny:acme:bot:AbC123xy" or a base name
    base: str                 # a base model spec resolve_model() accepts (catalogue name, folder)
    tuned: str | None         # plain model folder of the tuned model; None for a base model
    owned_by: str             # org, or "system" for base models
    created: int              # unix seconds
    adapter: str | None = None  # the run's adapter folder (PEFT or hone's format), when it has one


class Catalog(Protocol):
    def list(self, org: str) -> list[ModelSource]: ...
    def resolve(self, org: str, model_id: str) -> ModelSource | None: ...
    def delete(self, org: str, model_id: str) -> bool: ...


class DatabaseCatalog:
    """The Catalog over the service database and the run folders the jobs trained in."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings

    def _base(self, name: str) -> ModelSource:
        spec = self.settings.base_models[name]
        path = Path(spec)
        created = int(path.stat().st_mtime) if path.exists() else 0
        return ModelSource(name, spec, None, "system", created)

    def _tuned(self, job: db.Job) -> ModelSource | None:
        from hone.train.run import tuned_model_folder

        run = Path(job.run_dir or "")
        try:
            folder = tuned_model_folder(run)  # made when the job succeeded; found again at once
        except Exception:  # noqa: BLE001 - a run folder removed by hand: the model is gone
            return None
        parent = job.model
        while parent.startswith("ft:"):  # fine-tuned again: the base is its parent's base
            source = self.resolve(job.org, parent)
            if source is None:
                return None
            parent = source.base
        base = self.settings.base_models.get(parent, parent)
        adapter = run / "adapter"
        return ModelSource(job.fine_tuned_model, base, str(folder), job.org, job.finished_at or job.created_at,
                           str(adapter) if adapter.is_dir() else None)

    def _jobs(self, org: str, model_id: str | None = None) -> list[db.Job]:
        with db.session(self.settings.db) as s:
            query = select(db.Job).where(db.Job.org == org, db.Job.status == "succeeded",
                                         db.Job.model_deleted == 0, db.Job.fine_tuned_model.is_not(None))
            if model_id is not None:
                query = query.where(db.Job.fine_tuned_model == model_id)
            return list(s.scalars(query.order_by(db.Job.seq)))

    def list(self, org: str) -> list[ModelSource]:
        tuned = [self._tuned(job) for job in self._jobs(org)]
        return [self._base(name) for name in self.settings.base_models] + [t for t in tuned if t]

    def resolve(self, org: str, model_id: str) -> ModelSource | None:
        if model_id in self.settings.base_models:
            return self._base(model_id)
        jobs = self._jobs(org, model_id)
        return self._tuned(jobs[0]) if jobs else None

    def delete(self, org: str, model_id: str) -> bool:
        """Hide a tuned model from its org (its run folder stays, as the registry's record)."""
        with db.session(self.settings.db) as s:
            done = s.execute(update(db.Job).where(db.Job.org == org, db.Job.fine_tuned_model == model_id,
                                                  db.Job.model_deleted == 0).values(model_deleted=1)).rowcount
            s.commit()
        return bool(done)
