"""The Production section: GET /v1/hone/traffic (the models with captured traffic) and GET /v1/hone/monitor
(`hone monitor` of one, with its rated answers)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from hone.errors import UserError
from hone.serve.auth import current_org
from hone.serve.errors import APIError
from hone.serve.extensions.paths import without_server_paths

router = APIRouter()


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
        raise APIError(404 if "no captured traffic" in message else 400, without_server_paths(request, message),
                       param="model") from None
    if result["training_data"]:
        result["training_data"] = Path(result["training_data"]).name
    rated = traffic.read_exchanges(model, None, org, settings.db, rated=True)
    result["feedback"] = [{k: row[k] for k in ("id", "model", "created_at", "messages", "answer", "rating",
                                               "correction")} for row in reversed(traffic.feedback_rows(rated))]
    return without_server_paths(request, result)
