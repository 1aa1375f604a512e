"""The Data and Plan sections: POST /v1/hone/data/check (`hone data check` of a file, stored nowhere) and
GET /v1/hone/files/{id}/advice (`hone plan --data`: the advised recipe and the memory and time plan)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile

from hone.errors import UserError
from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.errors import APIError, error_responses
from hone.serve.files import _copy_limited, _extension, absent_not_null, get_file, stored_path

router = APIRouter()
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
    spec = _base_spec(request, model)
    assert spec is not None
    with db.session(request.app.state.settings.db) as s:
        row = get_file(s, org, file_id, "file_id")
    # imported once the file and model are known to exist: a first import took over 10 s on a loaded machine
    from hone.config import DEFAULT_LR, RunConfig, TrainSection, load_config, overrides
    from hone.objectives.advice import advise
    from hone.objectives.plan import make_plan

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
