"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints.

The API only writes rows; workers (worker.py) do the work. A job goes validating_files -> queued ->
running -> succeeded | failed | cancelled. Cancel and pause mark the row (`status` and `request`);
the worker holding the job sees the mark on its next heartbeat and interrupts its training, which
saves a checkpoint. Resume puts a paused job back in the queue; the next worker continues from that
checkpoint. Lists are newest first; `after` is the id of the last item of the previous page.
"""
from __future__ import annotations

import random
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.body import unicode_text
from hone.serve.errors import APIError, error_responses, not_found
from hone.serve.files import get_file
from hone.serve.hyperparameters import hyperparameters_schema, method_schema, parse_method, top_level

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"], dependencies=[Depends(unicode_text)],
                   responses=error_responses(404))
ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
SUFFIX = r"^[A-Za-z0-9_.-]{1,64}$"   # it becomes part of the model name, ft:BASE:ORG:SUFFIX:ID
MAX_SEED = 2147483647
# OpenAI's metadata: up to 16 pairs, keys up to 64 characters, values up to 512
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


def schema_of(replacement: dict):
    """json_schema_extra that documents a field by `replacement` (the generated `object` says nothing)."""
    def replace(schema: dict) -> None:
        description = schema.get("description")
        schema.clear()
        schema.update(replacement, **({"description": description} if description else {}))
    return replace


class JobCreate(BaseModel):
    """The body of `jobs.create`; unknown keys are ignored as OpenAI's clients may send newer ones."""
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    validation_file: Optional[str] = None
    suffix: Optional[str] = Field(None, pattern=SUFFIX, description="1-64 letters, digits, '-', '_' or '.'")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    metadata: Optional[dict[MetadataKey, MetadataValue]] = Field(None, max_length=16)
    # parse_method checks both (a 400 naming the part); the schema says what it accepts
    method: Optional[dict[str, Any]] = Field(None, json_schema_extra=schema_of(method_schema()))
    hyperparameters: Optional[dict[str, Any]] = Field(
        None, json_schema_extra=schema_of(hyperparameters_schema("supervised")),
        description="deprecated: supervised hyperparameters; use method")
    integrations: Optional[list[dict[str, Any]]] = None


def tuned_model_name(job: db.Job) -> str:
    """ft:BASE:ORG:SUFFIX:ID, ID being 8 letters and digits (the job id's tail, itself random)."""
    base = job.model.split(":")[1] if job.model.startswith("ft:") else job.model
    return f"ft:{base}:{job.org}:{job.suffix or ''}:{job.id[-8:]}"


def job_object(job: db.Job) -> dict:
    status = job.status
    return {"object": "fine_tuning.job", "id": job.id, "model": job.model, "created_at": job.created_at,
            "finished_at": job.finished_at, "fine_tuned_model": job.fine_tuned_model,
            "organization_id": job.org, "result_files": job.result_files or [], "status": status,
            "validation_file": job.validation_file, "training_file": job.training_file,
            "trained_tokens": job.trained_tokens, "error": job.error, "seed": job.seed,
            "estimated_finish": job.estimated_finish if status == "running" else None,
            "integrations": [], "metadata": job.meta, "user_provided_suffix": job.suffix,
            "hyperparameters": top_level(job.method), "method": job.method}


def event_object(event: db.Event) -> dict:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{event.seq}", "created_at": event.created_at,
            "level": event.level, "message": event.message, "type": event.type, "data": event.data or {}}


def checkpoint_object(ckpt: db.Checkpoint, job: db.Job) -> dict:
    metrics = {k: v for k, v in (ckpt.metrics or {}).items() if v is not None}
    return {"object": "fine_tuning.job.checkpoint", "id": f"ftckpt_{ckpt.seq}", "created_at": ckpt.created_at,
            "fine_tuned_model_checkpoint": f"{tuned_model_name(job)}:ckpt-step-{ckpt.step}",
            "fine_tuning_job_id": job.id, "metrics": metrics, "step_number": ckpt.step}


def get_job(s: Session, org: str, job_id: str, param: str = "fine_tuning_job_id") -> db.Job:
    job = s.scalar(select(db.Job).where(db.Job.id == job_id, db.Job.org == org))
    if job is None:
        raise not_found("fine-tuning job", job_id, param)
    return job


def _check_model(request: Request, s: Session, org: str, model: str) -> None:
    if model in request.app.state.settings.base_models:
        return
    parent = s.scalar(select(db.Job).where(db.Job.org == org, db.Job.fine_tuned_model == model,
                                           db.Job.model_deleted == 0))
    if parent is None:
        offered = ", ".join(request.app.state.settings.base_models) or "none"
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it. "
                       f"Base models here: {offered}.", param="model", code="model_not_found")


@router.post("/jobs")
def create_job(request: Request, body: JobCreate, org: str = Depends(current_org)) -> dict:
    """Queue a fine-tuning job; a worker validates its files, then trains."""
    method = parse_method(body.method, body.hyperparameters)
    with db.session(request.app.state.settings.db) as s:
        _check_model(request, s, org, body.model)
        training = get_file(s, org, body.training_file, "training_file")
        if body.validation_file:
            get_file(s, org, body.validation_file, "validation_file")
        if body.validation_file == body.training_file:
            raise APIError(400, "validation_file must differ from training_file.", param="validation_file")
        job = db.Job(id=db.new_id("ftjob-"), org=org, model=body.model, training_file=training.id,
                     validation_file=body.validation_file, suffix=body.suffix,
                     seed=body.seed if body.seed is not None else random.randint(0, MAX_SEED),
                     meta=body.metadata, method=method, status="validating_files", created_at=db.now(),
                     result_files=[], attempts=0, model_deleted=0)
        s.add(job)
        db.add_event(s, job.id, f"Created fine-tuning job: {job.id}")
        files = f"training file: {job.training_file}" + (
            f" and validation file: {job.validation_file}" if job.validation_file else "")
        db.add_event(s, job.id, f"Validating {files}")
        s.commit()
        return job_object(job)


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[k]=v` query pairs (the client sends a deepObject); 'metadata=null' selects jobs without."""
    pairs = {key[9:-1]: value for key, value in request.query_params.items()
             if key.startswith("metadata[") and key.endswith("]")}
    bare = request.query_params.get("metadata")
    if bare == "null":
        return {}
    if bare is not None:
        raise APIError(400, "metadata filters by pairs, metadata[key]=value, or is metadata=null; got "
                       f"metadata={bare[:40]!r}", param="metadata")
    return pairs or None


METADATA_FILTER = {"parameters": [{
    "name": "metadata", "in": "query", "style": "deepObject", "explode": True, "required": False,
    "description": "jobs whose metadata holds these pairs: metadata[key]=value; metadata=null for jobs without",
    # values stay untyped here: in a query string every value is text, and one typed `string` made
    # schemathesis count metadata[k]=true as a violation the server should refuse
    "schema": {"type": "object"}}]}


@router.get("/jobs", openapi_extra=METADATA_FILTER)
def list_jobs(request: Request, after: Optional[str] = None, limit: int = Query(20, ge=1, le=100),
              org: str = Depends(current_org)) -> dict:
    wanted = _metadata_filter(request)
    with db.session(request.app.state.settings.db) as s:
        query = select(db.Job).where(db.Job.org == org)
        if after:
            query = query.where(db.Job.seq < get_job(s, org, after, "after").seq)
        query = query.order_by(db.Job.seq.desc())
        rows = []
        # Metadata is JSON: filtered here, portably, while paging through the org's jobs.
        for job in s.scalars(query):
            if wanted == {} and job.meta:
                continue
            if wanted and any((job.meta or {}).get(k) != v for k, v in wanted.items()):
                continue
            rows.append(job)
            if len(rows) > limit:
                break
    return {"object": "list", "data": [job_object(j) for j in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/jobs/{job_id}")
def retrieve_job(request: Request, job_id: str, org: str = Depends(current_org)) -> dict:
    with db.session(request.app.state.settings.db) as s:
        return job_object(get_job(s, org, job_id))


def _change(request: Request, org: str, job_id: str, action: str) -> dict:
    """cancel / pause / resume: the row changes now; a worker holding the job stops on its next heartbeat.

    One conditional UPDATE, so a worker finishing the job at the same moment cannot be overwritten."""
    allowed = {"cancel": ACTIVE + ("paused",), "pause": ACTIVE, "resume": ("paused",)}[action]
    changes: dict[str, dict[str, Any]] = {
        "cancel": {"status": "cancelled", "finished_at": db.now(), "request": "cancel"},
        "pause": {"status": "paused", "request": "pause"},
        "resume": {"status": "queued"}}  # `request` stays set until the old worker lets go
    values = changes[action]
    message = {"cancel": "Fine-tuning job cancelled",
               "pause": "Fine-tuning job paused; its latest checkpoint is kept",
               "resume": "Fine-tuning job resumed; queued to continue from its latest checkpoint"}[action]
    with db.session(request.app.state.settings.db) as s:
        job = get_job(s, org, job_id)
        done = s.execute(update(db.Job).where(db.Job.id == job.id, db.Job.status.in_(allowed))
                         .values(**values)).rowcount  # type: ignore[attr-defined]  # an UPDATE returns a CursorResult; execute() is typed Result
        if not done:
            s.rollback()
            status = s.scalar(select(db.Job.status).where(db.Job.id == job.id))
            # 400, not 409: the client retries 409s (reference §2.6)
            raise APIError(400, f"Cannot {action} a job whose status is {status}.", param="fine_tuning_job_id",
                           code="invalid_job_status")
        db.add_event(s, job.id, message)
        s.commit()
        s.refresh(job)
        return job_object(job)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, org: str = Depends(current_org)) -> dict:
    return _change(request, org, job_id, "cancel")


@router.post("/jobs/{job_id}/pause")
def pause_job(request: Request, job_id: str, org: str = Depends(current_org)) -> dict:
    """Pause: status "paused", which OpenAI returns too but its client's strict mode does not accept."""
    return _change(request, org, job_id, "pause")


@router.post("/jobs/{job_id}/resume")
def resume_job(request: Request, job_id: str, org: str = Depends(current_org)) -> dict:
    return _change(request, org, job_id, "resume")


def _seq_cursor(after: str | None, prefix: str) -> int | None:
    """The sequence number in an `after` id (its shape, prefix and digits, is checked by the Query pattern)."""
    return None if after is None else int(after[len(prefix):])


@router.get("/jobs/{job_id}/events")
def list_events(request: Request, job_id: str, after: Optional[str] = Query(None, pattern=r"^ftevent-[0-9]{1,18}$"),
                limit: int = Query(20, ge=1, le=1000), org: str = Depends(current_org)) -> dict:
    cursor = _seq_cursor(after, "ftevent-")
    with db.session(request.app.state.settings.db) as s:
        get_job(s, org, job_id)
        query = select(db.Event).where(db.Event.job_id == job_id)
        if cursor is not None:
            query = query.where(db.Event.seq < cursor)
        rows = s.scalars(query.order_by(db.Event.seq.desc()).limit(limit + 1)).all()
    return {"object": "list", "data": [event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, job_id: str, after: Optional[str] = Query(None, pattern=r"^ftckpt_[0-9]{1,18}$"),
                     limit: int = Query(10, ge=1, le=100), org: str = Depends(current_org)) -> dict:
    cursor = _seq_cursor(after, "ftckpt_")
    with db.session(request.app.state.settings.db) as s:
        job = get_job(s, org, job_id)
        query = select(db.Checkpoint).where(db.Checkpoint.job_id == job_id)
        if cursor is not None:
            query = query.where(db.Checkpoint.seq < cursor)
        rows = s.scalars(query.order_by(db.Checkpoint.seq.desc()).limit(limit + 1)).all()
        data = [checkpoint_object(c, job) for c in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}
