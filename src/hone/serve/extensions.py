"""hone's extensions to the OpenAI API, under /v1/hone: what the dashboard needs and OpenAI has no call for.

Each one is a library function behind a key, scoped to the key's org like every /v1 operation:
- POST /v1/hone/data/check: the full quality report of a file (`hone data check`), stored nowhere, so a
  file the upload refuses still shows every problem by line and field.
- GET  /v1/hone/files/{id}/advice: the advised recipe with its reasons (`hone plan --data`) and the memory
  and time plan of the server's method (`hone plan`).
- GET  /v1/hone/fine_tuning/jobs/{id}/stream: the job's events as server-sent events, oldest first, then
  each new one as it is written, ending when the job ends (`after` resumes a dropped stream).
- POST /v1/hone/fine_tuning/jobs/{id}/evaluation: tuned against base on held-out data with paired
  bootstrap intervals and the per-item outcome (`hone eval`).
- POST /v1/hone/fine_tuning/jobs/{id}/forgetting: the forgetting probe, base against tuned.
- GET  /v1/hone/runs, POST /v1/hone/runs/{id}/tags, GET /v1/hone/runs/diff: the registry's records of the
  org's jobs (`hone runs`), tags and diffs.
- GET  /v1/hone/traffic, GET /v1/hone/monitor: the models with captured traffic, and `hone monitor` of one with
  its rated answers (the Production section).
- POST /v1/hone/runs/{id}/promotion: promote to production through `hone promote`'s gate (or forced, saying
  which conditions failed).
- GET  /v1/hone/export_formats, POST /v1/hone/runs/{id}/exports: `hone export`, verified, with its table.
The registry is the server's, not an org's: only runs trained by this org's jobs are ever shown or changed.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from hone.errors import UserError
from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.errors import APIError, error_responses, not_found
from hone.serve.files import _copy_limited, _extension, absent_not_null, get_file, stored_path
from hone.serve.jobs import ACTIVE, event_object, get_job, job_object

router = APIRouter(prefix="/v1/hone", tags=["hone extensions"], responses=error_responses(404))
TAG = r"^[A-Za-z0-9_.-]{1,100}$"
STREAM_POLL_S = 0.5         # how often the event stream looks for new rows
STREAM_MAX_S = 600.0        # a stream ends after this long; the client reconnects with `after`
SHOWN_LINES = 20            # problem lines whose text comes back with the report
# The hone config fields behind the job API's hyperparameters: their one-line descriptions are the help.
HYPERPARAMETER_FIELDS = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "lr"}


def _base_spec(request: Request, model: str | None) -> str | None:
    """The folder or catalogue name behind a base model this server offers, or a 404 naming `model`."""
    if model is None:
        return None
    models = request.app.state.settings.base_models
    if model not in models:
        raise APIError(404, f"The model `{model}` is not a base model of this server; offered: {', '.join(models)}.",
                       param="model", code="model_not_found")
    return models[model]


def _problem_lines(path: Path, report: dict) -> dict[str, str]:
    """line number -> that line's text (cut at 2,000 characters), for the lines the report names."""
    wanted = sorted({p["line"] for f in report["files"] for group in f["validation"]["problems"].values()
                     for p in group if p.get("line")})[:SHOWN_LINES]
    if not wanted or path.suffix not in (".jsonl", ".csv", ".tsv"):
        return {}
    found, last = {}, wanted[-1]
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            if number in wanted:
                found[str(number)] = text.rstrip("\n")[:2000]
            if number >= last:
                break
    return found


@router.post("/data/check", responses=error_responses(413))
def check_data(request: Request, file: UploadFile, model: Optional[str] = Form(None, json_schema_extra=absent_not_null),
               org: str = Depends(current_org)) -> dict:
    """The quality report of a data file, stored nowhere: shape, every problem by line and field (with the
    lines' text), duplicates, near-duplicates, PII, token lengths, the rendered example with trained tokens
    in [[brackets]] (when `model` names a base model), and the train/validation split a job would use."""
    from hone.config import DataSection
    from hone.data.quality import check_data as quality_report
    from hone.models.load import counting_tokenizer

    spec = _base_spec(request, model)
    name = Path(file.filename or "upload").name
    with tempfile.TemporaryDirectory(prefix="hone-check-") as folder:
        path = Path(folder) / f"data{_extension(file.filename)}"
        _copy_limited(file, path, int(request.app.state.settings.max_upload_mb * 2**20))
        tokenizer, context = counting_tokenizer(spec) if spec else (None, None)
        try:
            report = quality_report([path], spec, tokenizer=tokenizer, context=context)
        except UserError as exc:
            raise APIError(400, f"{name}: {str(exc).replace(str(path), name)}", param="file",
                           code="invalid_file_format") from None
        lines = _problem_lines(path, report)
    text = json.dumps(report, default=str).replace(json.dumps(str(path))[1:-1], name)
    report = json.loads(text)
    valid = report["files"][0]["valid"]
    held = round(valid * DataSection().validation_fraction)
    report["lines"] = lines
    report["split"] = {"train": valid - held, "validation": held, "validation_fraction":
                       DataSection().validation_fraction}
    return report


@router.get("/files/{file_id}/advice")
def advice(request: Request, file_id: str, model: str = Query(..., min_length=1, max_length=200),
           org: str = Depends(current_org)) -> dict:
    """The recipe hone advises for an uploaded file on `model` (each choice with its reason), the memory and
    time plan of this server's method, and the one-line description of each hyperparameter a job takes."""
    from hone.config import DEFAULT_LR, RunConfig, TrainSection, load_config, overrides
    from hone.objectives.advice import advise
    from hone.objectives.plan import make_plan

    spec = _base_spec(request, model)
    assert spec is not None
    with db.session(request.app.state.settings.db) as s:
        row = get_file(s, org, file_id, "file_id")
    method = request.app.state.settings.method
    try:
        config = load_config(None, overrides(None, **{"model.name": spec, "method.name": method}))
        recipe = advise(stored_path(row), config)
        plan = make_plan(spec, [method], recipe.max_length, recipe.batch_size, recipe.n_examples)
    except UserError as exc:
        raise APIError(400, str(exc), param="file_id") from None
    recipe_json = recipe.to_json()
    recipe_json["data"] = row.filename
    recipe_json["reasons"]["method"] = f"this server trains every job with {method} (hone serve --method)"
    train_fields = TrainSection.model_fields
    fields = {name: train_fields[hone_name].description for name, hone_name in HYPERPARAMETER_FIELDS.items()}
    fields["method"] = RunConfig.model_fields["method"].description or "how much of the model changes"
    # a job takes a multiplier of the server's rate for its method (worker.py), not a rate
    default_lr = DEFAULT_LR[method]
    fields["learning_rate_multiplier"] = (f"x {default_lr:g}, this server's {method} rate. "
                                          f"{fields['learning_rate_multiplier']}")
    return {"advice": recipe_json, "plan": plan.as_dict(), "server_method": method, "default_lr": default_lr,
            "fields": fields}


def _sse(kind: str, payload: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(payload)}\n\n"


@router.get("/fine_tuning/jobs/{job_id}/stream",
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "`event: job` (the job object) whenever its status or ETA changes, "
                             "`event: event` (a job event, id ftevent-N) for each event, oldest first"}})
def stream_events(request: Request, job_id: str, after: Optional[str] = Query(None, pattern=r"^ftevent-[0-9]{1,18}$"),
                  org: str = Depends(current_org)) -> StreamingResponse:
    """The job's events as server-sent events: those after `after` (all by default), then each new one as the
    worker writes it, with the job object on every change of status or ETA; the stream ends when the job does."""
    settings = request.app.state.settings
    with db.session(settings.db) as s:
        get_job(s, org, job_id)
    cursor = int(after[len("ftevent-"):]) if after else 0

    def frames() -> Iterator[str]:
        seen, status, started = cursor, None, time.monotonic()
        shown: tuple | None = None
        while True:
            with db.session(settings.db) as s:
                job = get_job(s, org, job_id)
                rows = s.scalars(select(db.Event).where(db.Event.job_id == job_id, db.Event.seq > seen)
                                 .order_by(db.Event.seq)).all()
                if (job.status, job.estimated_finish) != shown:   # a new status, or a new ETA while it runs
                    shown, status = (job.status, job.estimated_finish), job.status
                    yield _sse("job", job_object(job))
            for row in rows:
                seen = row.seq
                yield _sse("event", event_object(row), f"ftevent-{row.seq}")
            if (status not in ACTIVE and not rows) or time.monotonic() - started > STREAM_MAX_S:
                return
            time.sleep(STREAM_POLL_S)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


class EvaluationRequest(BaseModel):
    limit: int = Field(20, ge=1, le=500, description="held-out items scored (the first N)")
    max_new_tokens: Optional[int] = Field(None, ge=1, le=512, description="answer length; default from the data")


@router.post("/fine_tuning/jobs/{job_id}/evaluation")
def evaluation(request: Request, job_id: str, body: EvaluationRequest, org: str = Depends(current_org)) -> dict:
    """The tuned model of a succeeded job against its base on held-out data (the job's validation file, else
    the examples the run held out of its training file): every metric with a paired bootstrap interval, and
    each item's texts and outcome (improved, regressed, unchanged)."""
    from hone.evaluation.run_eval import EvalOptions, evaluate_model

    run_dir = _succeeded_run(request, org, job_id)
    with db.session(request.app.state.settings.db) as s:
        job = get_job(s, org, job_id)
        data = stored_path(get_file(s, org, job.validation_file, "validation_file")) if job.validation_file else None
    data = data or _held_out(run_dir)
    try:
        result = evaluate_model(str(run_dir), EvalOptions(data=data, limit=body.limit, perplexity=False,
                                                          max_new_tokens=body.max_new_tokens))
    except UserError as exc:
        raise APIError(400, str(exc), param="fine_tuning_job_id") from None
    out = result.to_json()
    # the API's names for the two models; the server's folders are not the client's business
    out.update(model=job.fine_tuned_model, base_model=job.model, run_dir=None)
    return out


def _succeeded_run(request: Request, org: str, job_id: str) -> Path:
    with db.session(request.app.state.settings.db) as s:
        job = get_job(s, org, job_id)
    if job.status != "succeeded" or not job.run_dir:
        raise APIError(400, f"Job {job_id} has status {job.status}; only a succeeded job has a tuned model to "
                       "compare.", param="fine_tuning_job_id", code="invalid_job_status")
    return Path(job.run_dir)


@router.post("/fine_tuning/jobs/{job_id}/forgetting")
def forgetting(request: Request, job_id: str, org: str = Depends(current_org)) -> dict:
    """The forgetting probe (`evaluation/forgetting.py`): general-skills multiple choice scored on the model the
    job started from and on its tuned model, the drop in points with its paired bootstrap interval, items lost
    and gained, by category. Kept in the run folder: asked again, it answers at once."""
    from hone import atomic
    from hone.config import load_config
    from hone.evaluation.forgetting import compare_probe, load_probe, score_probe
    from hone.evaluation.run_eval import load_model

    run_dir = _succeeded_run(request, org, job_id)
    saved = run_dir / "forgetting.json"
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    config = load_config(run_dir / "config.yaml")
    items = load_probe(config.eval.probe)
    model, tokenizer = load_model(config.model.name, None, "cpu")
    base = score_probe(model, tokenizer, items, label="forgetting probe (base)")
    model, tokenizer = load_model(str(run_dir), run_dir, "cpu")
    tuned = score_probe(model, tokenizer, items, label="forgetting probe (tuned)")
    result = compare_probe(base, tuned, config.eval.max_forgetting).to_json()
    atomic.write_text(saved, json.dumps(result))
    return result


def _held_out(run_dir: Path) -> Path:
    """The validation examples the run held out of its training file, written once beside it: the same
    seeded split training made (objectives/sft.py read_chat_splits), so none of them was trained on."""
    from hone import atomic
    from hone.config import load_config
    from hone.objectives.sft import read_chat_splits

    path = run_dir / "held_out.jsonl"
    if not path.is_file():
        config = load_config(run_dir / "config.yaml")
        if config.objective != "sft":
            raise APIError(400, f"a {config.objective} job is compared on a validation file: give one when "
                           "creating the job", param="fine_tuning_job_id")
        held = read_chat_splits(config).validation
        if not held:
            raise APIError(400, "the job held out no examples to compare on; give a validation file",
                           param="fine_tuning_job_id")
        atomic.write_text(path, "".join(json.dumps({"messages": e.messages}, ensure_ascii=False) + "\n"
                                        for e in held))
    return path


def _without_server_paths(request: Request, data):
    """`data` with the server's folders named as the API names them: a base model's folder by its model name,
    a job's run folder by the job id. Where the operator keeps things is not a client's business."""
    text = json.dumps(data, default=str)
    names = {str(Path(spec).resolve()): name for name, spec in request.app.state.settings.base_models.items()
             if "/" in spec}
    names[str(db.state_dir("jobs").resolve())] = "jobs"
    for folder, name in sorted(names.items(), key=lambda pair: -len(pair[0])):
        text = text.replace(json.dumps(folder)[1:-1], name)
    return json.loads(text)


def _org_runs(request: Request, org: str) -> dict[str, dict]:
    """Registry records (with tags) of the org's jobs, by run id, newest first."""
    from hone.registry.store import list_runs, using_database

    settings = request.app.state.settings
    with db.session(settings.db) as s:
        jobs = {row.id: row for row in s.scalars(select(db.Job).where(db.Job.org == org, db.Job.run_dir.is_not(None)))}
    with using_database(settings.db):
        runs = list_runs()
    out = {}
    for run in runs:
        job = jobs.get(run["name"])
        if job is None or Path(run["path"]).resolve() != Path(job.run_dir or "").resolve():
            continue
        out[run["id"]] = {key: run[key] for key in ("id", "ref", "name", "version", "status", "base_model", "method",
                                                   "objective", "metrics", "parent_id", "created_at", "finished_at",
                                                   "tags", "data")}
        out[run["id"]]["job"] = {"id": job.id, "model": job.model, "fine_tuned_model": job.fine_tuned_model,
                                 "status": job.status}
        out[run["id"]]["data"] = {role: {"sha256": d.get("sha256"), "bytes": d.get("bytes")}
                                  for role, d in (run["data"] or {}).items() if isinstance(d, dict)}
    return out


@router.get("/runs")
def list_org_runs(request: Request, org: str = Depends(current_org)) -> dict:
    """The registry's runs of this org's jobs, newest first: status, base model, method, metrics, tags, and
    `parent_id` (the run whose tuned model this one trained on: its lineage)."""
    runs = list(_org_runs(request, org).values())
    return {"object": "list", "data": _without_server_paths(request, runs), "has_more": False}


class TagRequest(BaseModel):
    tag: str = Field(..., pattern=TAG, description="e.g. production; it moves from another version of the run")
    remove: bool = Field(False, description="take the tag off this run instead")


@router.post("/runs/{run_id}/tags")
def tag_run(request: Request, run_id: str, body: TagRequest, org: str = Depends(current_org)) -> dict:
    """Point NAME@TAG at this run (`hone runs tag`): promote to production, or take a tag off."""
    from hone.registry.store import set_tag, using_database

    if run_id not in _org_runs(request, org):
        raise not_found("run", run_id, "run_id")
    try:
        with using_database(request.app.state.settings.db):
            set_tag(run_id, body.tag, body.remove)
    except UserError as exc:
        raise APIError(400, str(exc), param="tag") from None
    return _without_server_paths(request, _org_runs(request, org)[run_id])


class PromotionRequest(BaseModel):
    tag: str = Field("production", pattern=TAG, description="the tag to move, e.g. production")
    new_slice_file: Optional[str] = Field(None, max_length=200, description="id of an uploaded file of new data on "
                                          "which the run must be better; default: the examples its job held out")
    limit: int = Field(20, ge=1, le=500, description="items scored from each set (the first N)")
    force: bool = Field(False, description="move the tag even when a condition fails (the failures are recorded)")


@router.post("/runs/{run_id}/promotion")
def promote_run(request: Request, run_id: str, body: PromotionRequest, org: str = Depends(current_org)) -> dict:
    """Promote one of the org's runs through `hone promote`'s gate: weighed against the org's run tagged `tag` on
    that run's original held-out examples (not worse) and on new data (better), both with paired bootstrap
    intervals, and the forgetting probe (within the gate); the tag moves when all hold, or when `force` says so
    (the failed conditions are named and recorded). The first run to get the tag has nothing to weigh against."""
    from hone.evaluation.promotion import promote
    from hone.registry.store import set_tag, using_database

    settings = request.app.state.settings
    runs = _org_runs(request, org)
    if run_id not in runs:
        raise not_found("run", run_id, "run_id")
    if body.tag in runs[run_id]["tags"]:
        raise APIError(400, f"{runs[run_id]['ref']} already has the tag {body.tag}", param="tag")
    holders = [r for r in runs.values() if body.tag in r["tags"]]
    if not holders:
        with using_database(settings.db):
            set_tag(run_id, body.tag)
        return _without_server_paths(request, {
            "candidate": runs[run_id]["ref"], "champion": None, "tag": body.tag, "promoted": True, "forced": False,
            "first": True, "reasons": [], "conditions": [], "figures": {},
            "note": f"the org's first run tagged {body.tag}: nothing to weigh it against",
            "run": _org_runs(request, org)[run_id]})
    champion = holders[0]
    with db.session(settings.db) as s:
        mine = get_job(s, org, runs[run_id]["job"]["id"])
        theirs = get_job(s, org, champion["job"]["id"])
        slice_id, slice_param = (body.new_slice_file, "new_slice_file") if body.new_slice_file \
            else (mine.validation_file, "validation_file")
        new_slice = stored_path(get_file(s, org, slice_id, slice_param)) if slice_id else None
        original = stored_path(get_file(s, org, theirs.validation_file, "validation_file")) \
            if theirs.validation_file else None
    new_slice = new_slice or _held_out(Path(mine.run_dir or ""))
    original = original or _held_out(Path(theirs.run_dir or ""))
    try:
        with using_database(settings.db):
            result = promote(run_id, body.tag, new_slice, force=body.force, limit=body.limit,
                             champion_ref=champion["id"], original_test=original).to_json()
    except UserError as exc:
        raise APIError(400, _without_server_paths(request, str(exc)), param="run_id") from None
    result["figures"]["new_slice"]["file"] = body.new_slice_file or (
        "the candidate's validation file" if mine.validation_file else "the examples the candidate's job held out")
    result.update(first=False, run=_org_runs(request, org)[run_id],
                  note=("forced: the tag moved although " + "; ".join(result["reasons"])) if result["forced"] else None)
    return _without_server_paths(request, result)


@router.get("/runs/diff")
def diff_runs(request: Request, a: str = Query(..., max_length=200), b: str = Query(..., max_length=200),
              org: str = Depends(current_org)) -> dict:
    """What differs between two of the org's runs (`hone runs diff`): run fields, config, data, metrics."""
    from hone.registry.store import diff_runs as diff, using_database

    runs = _org_runs(request, org)
    for param, run_id in (("a", a), ("b", b)):
        if run_id not in runs:
            raise not_found("run", run_id, param)
    with using_database(request.app.state.settings.db):
        found = diff(a, b)
    return _without_server_paths(request, {section: [{"key": key, "a": left, "b": right} for key, left, right in rows]
                                           for section, rows in found.items()})


@router.get("/export_formats")
def export_formats(request: Request, org: str = Depends(current_org)) -> dict:
    """What `hone export` writes (exporting/formats.py FORMATS): each format, its quants (the first is the
    default), what runs it, and why a quant cannot be written on this server (a tool not installed), if so."""
    from hone.exporting import FORMATS
    from hone.exporting.gguf import tool_missing

    return {"object": "list", "data": [
        {"name": f.name, "what": f.what, "runtime": f.runtime,
         "quants": [{"name": q.name, "unavailable": tool_missing(q.tool) if q.tool != "torch" else None}
                    for q in f.quants]} for f in FORMATS.values()]}


class ExportRequest(BaseModel):
    format: str = Field(..., max_length=40, description="hf, peft, gguf, ollama or gguf-lora (see export_formats)")
    quant: Optional[str] = Field(None, max_length=40, description="one of the format's quants; default its first")
    force: bool = Field(False, description="replace an earlier export of this format and quant")


@router.post("/runs/{run_id}/exports")
def export(request: Request, run_id: str, body: ExportRequest, org: str = Depends(current_org)) -> dict:
    """Export one of the org's runs as `hone export` does: the artifact is written, loaded back and compared with
    the run's own model before it is kept; the answer is its manifest with the verification table (per prompt:
    max |delta logit| and whether the greedy answer matched). A rejected artifact is a 400 saying why."""
    from hone.exporting import ExportRejected, export_run
    from hone.registry.store import using_database

    runs = _org_runs(request, org)
    if run_id not in runs:
        raise not_found("run", run_id, "run_id")
    with db.session(request.app.state.settings.db) as s:
        job = get_job(s, org, runs[run_id]["job"]["id"])
    try:
        with using_database(request.app.state.settings.db):
            result = export_run(Path(job.run_dir or ""), body.format, body.quant, force=body.force)
    except (UserError, ExportRejected) as exc:
        raise APIError(400, _without_server_paths(request, str(exc)), param="format",
                       code="export_rejected" if isinstance(exc, ExportRejected) else None) from None
    manifest = dict(result.manifest)
    manifest.pop("run_path", None)
    return _without_server_paths(request, manifest)


@router.get("/traffic")
def traffic_models(request: Request, org: str = Depends(current_org)) -> dict:
    """Whether this server captures answers (`hone serve --capture`; only captured answers can be rated with
    POST /v1/feedback), and the models this org has captured traffic for, with their request counts."""
    from collections import Counter

    from hone.monitor import traffic

    settings = request.app.state.settings
    with traffic.session(settings.db) as s:
        counts = Counter(s.scalars(select(traffic.Capture.model).where(traffic.Capture.org == org)))
    return {"object": "list", "capture": bool(settings.capture),
            "data": [{"model": model, "requests": n} for model, n in sorted(counts.items())]}


@router.get("/monitor")
def monitor(request: Request, model: str = Query(..., min_length=1, max_length=200),
            since: Optional[str] = Query(None, pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?[mhdw]$",
                                         description="only traffic of the last 30m, 24h, 7d, 2w ..."),
            org: str = Depends(current_org)) -> dict:
    """`hone monitor MODEL` over this org's captured traffic: health per UTC day, the inputs' drift from the
    training data (MMD p-value, or why it was skipped), the furthest inputs, alarms; and the org's rated answers
    of the model (rating, correction), newest first."""
    from hone.monitor import traffic
    from hone.monitor.watch import monitor_model

    settings = request.app.state.settings
    try:
        result = monitor_model(model, traffic.parse_since(since), org=org, url=settings.db).to_json()
    except UserError as exc:
        message = str(exc).split("; models with traffic")[0]   # other orgs' model names are not this org's business
        raise APIError(404 if "no captured traffic" in message else 400, _without_server_paths(request, message),
                       param="model") from None
    if result["training_data"]:
        result["training_data"] = Path(result["training_data"]).name
    rated = traffic.read_exchanges(model, None, org, settings.db, rated=True)
    result["feedback"] = [{k: row[k] for k in ("id", "model", "created_at", "messages", "answer", "rating",
                                               "correction")} for row in reversed(traffic.feedback_rows(rated))]
    return _without_server_paths(request, result)
