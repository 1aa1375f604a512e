"""The Registry section: the registry's records of the org's jobs (`hone runs`), tags, diffs, promotion through
`hone promote`'s gate, and `hone export`, under /v1/hone/runs and /v1/hone/export_formats. The registry is the
server's, not an org's: only runs trained by this org's jobs are ever shown or changed."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from hone.errors import UserError
from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.errors import APIError, not_found
from hone.serve.extensions.compare import held_out
from hone.serve.extensions.paths import without_server_paths
from hone.serve.files import get_file, stored_path
from hone.serve.jobs import get_job

router = APIRouter()
TAG = r"^[A-Za-z0-9_.-]{1,100}$"


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
    return {"object": "list", "data": without_server_paths(request, runs), "has_more": False}


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
    return without_server_paths(request, _org_runs(request, org)[run_id])


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
        return without_server_paths(request, {
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
    new_slice = new_slice or held_out(Path(mine.run_dir or ""))
    original = original or held_out(Path(theirs.run_dir or ""))
    try:
        with using_database(settings.db):
            result = promote(run_id, body.tag, new_slice, force=body.force, limit=body.limit,
                             champion_ref=champion["id"], original_test=original).to_json()
    except UserError as exc:
        raise APIError(400, without_server_paths(request, str(exc)), param="run_id") from None
    result["figures"]["new_slice"]["file"] = body.new_slice_file or (
        "the candidate's validation file" if mine.validation_file else "the examples the candidate's job held out")
    result.update(first=False, run=_org_runs(request, org)[run_id],
                  note=("forced: the tag moved although " + "; ".join(result["reasons"])) if result["forced"] else None)
    return without_server_paths(request, result)


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
    return without_server_paths(request, {section: [{"key": key, "a": left, "b": right} for key, left, right in rows]
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
        raise APIError(400, without_server_paths(request, str(exc)), param="format",
                       code="export_rejected" if isinstance(exc, ExportRejected) else None) from None
    manifest = dict(result.manifest)
    manifest.pop("run_path", None)
    return without_server_paths(request, manifest)
