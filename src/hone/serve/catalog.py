"""The models an org may use: the server's base models, the org's succeeded fine-tunes, and registered models
the operator offers it (`hone serve --registry-model NAME=ORG`: NAME@production, NAME:3).

inference.py (part B) serves what this resolves. `tuned` is the job's run folder: its adapter/ (LoRA
by default, loaded onto a shared base) or model/ (full fine-tuning) is the tuned artifact, and
hone.methods.artifact.tuned_model_folder(run) turns it into a plain model folder when one is needed.
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
    tuned: str | None         # run folder of the tuned model (adapter/ or model/ inside); None for a base model
    owned_by: str             # org, or "system" for base models
    created: int              # unix seconds


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
        from hone.methods.artifact import is_tuned_artifact

        run = Path(job.run_dir or "")
        if not any(is_tuned_artifact(run / sub) for sub in ("adapter", "model")):
            return None  # the run folder was removed by hand: the model is gone
        parent = job.model
        while parent.startswith("ft:"):  # fine-tuned again: the base is its parent's base
            source = self.resolve(job.org, parent)
            if source is None:
                return None
            parent = source.base
        base = self.settings.base_models.get(parent, parent)
        assert job.fine_tuned_model is not None  # _jobs selects only jobs that made a model
        return ModelSource(job.fine_tuned_model, base, str(run), job.org, job.finished_at or job.created_at)

    def _jobs(self, org: str, model_id: str | None = None) -> list[db.Job]:
        with db.session(self.settings.db) as s:
            query = select(db.Job).where(db.Job.org == org, db.Job.status == "succeeded",
                                         db.Job.model_deleted == 0, db.Job.fine_tuned_model.is_not(None))
            if model_id is not None:
                query = query.where(db.Job.fine_tuned_model == model_id)
            return list(s.scalars(query.order_by(db.Job.seq)))

    def _registered(self, org: str, model_id: str) -> ModelSource | None:
        """NAME@TAG or NAME:VERSION of a registered model offered to `org` (--registry-model NAME=ORG), looked
        up now: when hone promote moves the tag, the next request gets the new version."""
        from hone.errors import UserError
        from hone.registry.store import parse_ref, resolve_ref

        try:
            ref = parse_ref(model_id)
        except UserError:
            return None
        if (ref.version is None and ref.tag is None) or self.settings.registry_models.get(ref.name) != org:
            return None
        row = resolve_ref(model_id)
        if row is None or row.status != "succeeded" or not Path(row.path).is_dir():
            return None
        return ModelSource(model_id, row.base_model or "", row.path, org, int(row.created_at.timestamp()))

    def list(self, org: str) -> list[ModelSource]:
        from hone.registry.store import tags_of_name

        tuned = [self._tuned(job) for job in self._jobs(org)]
        registered = [self._registered(org, f"{name}@{tag}") for name, owner in self.settings.registry_models.items()
                      if owner == org for tag in tags_of_name(name)]
        return [self._base(name) for name in self.settings.base_models] + [t for t in tuned + registered if t]

    def resolve(self, org: str, model_id: str) -> ModelSource | None:
        if model_id in self.settings.base_models:
            return self._base(model_id)
        if (registered := self._registered(org, model_id)) is not None:
            return registered
        jobs = self._jobs(org, model_id)
        return self._tuned(jobs[0]) if jobs else None

    def delete(self, org: str, model_id: str) -> bool:
        """Hide a tuned model from its org (its run folder stays, as the registry's record)."""
        with db.session(self.settings.db) as s:
            done = s.execute(update(db.Job).where(db.Job.org == org, db.Job.fine_tuned_model == model_id,
                                                  db.Job.model_deleted == 0).values(model_deleted=1)).rowcount  # type: ignore[attr-defined]  # an UPDATE returns a CursorResult; execute() is typed Result
            s.commit()
        return bool(done)
