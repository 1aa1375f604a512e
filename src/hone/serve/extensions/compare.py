"""The Compare section: a succeeded job's tuned model against its base on held-out data (`hone eval`, paired
bootstrap intervals) and the forgetting probe, under /v1/hone/fine_tuning/jobs/{id}/."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from hone.errors import UserError
from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.errors import APIError
from hone.serve.files import get_file, stored_path
from hone.serve.jobs import get_job

router = APIRouter()


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
    data = data or held_out(run_dir)
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


def held_out(run_dir: Path) -> Path:
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
