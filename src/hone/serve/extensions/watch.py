"""The Watch section: GET /v1/hone/fine_tuning/jobs/{id}/stream, a job's events as server-sent events."""
from __future__ import annotations

import json
import time
from typing import Iterator, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.jobs import ACTIVE, event_object, get_job, job_object

router = APIRouter()
STREAM_POLL_S = 0.5         # how often the event stream looks for new rows
STREAM_MAX_S = 600.0        # a stream ends after this long; the client reconnects with `after`


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
