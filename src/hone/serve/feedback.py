"""POST /v1/feedback: hone's own extension (OpenAI's API has no such endpoint), documented in docs/serve.md.

A client rates an answer by the id the official client returns (`completion.id`: chatcmpl-... or
cmpl-...), optionally with the answer it should have given. Only captured answers can be rated
(`hone serve --capture`), and only by their own org: anything else is a 404, as another org's file is.
A second rating of the same answer replaces the first. `hone data from-traffic` turns corrections into
training examples; `hone monitor` reports the share of bad ratings.
"""
from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hone.data.pii import redact
from hone.monitor import traffic
from hone.serve.auth import current_org
from hone.serve.errors import error_responses, not_found

router = APIRouter(prefix="/v1", tags=["feedback (hone extension)"], responses=error_responses(404))
MAX_CORRECTION = 100_000   # characters; a correction is one answer, not a document


class FeedbackRequest(BaseModel):
    """A rating of one captured answer."""
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64,
                    description="the completion's id as returned: chatcmpl-... or cmpl-...")
    rating: Literal["good", "bad"] = Field(description="good or bad")
    correction: str | None = Field(None, max_length=MAX_CORRECTION,
                                   description="the answer the model should have given (becomes training data)")


class FeedbackObject(BaseModel):
    id: str = Field(description="the rated completion's id")
    object: Literal["feedback"] = "feedback"
    rating: Literal["good", "bad"]
    correction: str | None = Field(description="as stored: personal data redacted unless the server keeps raw text")
    created_at: int


@router.post("/feedback", summary="Rate an answer (hone extension)")
async def post_feedback(body: FeedbackRequest, request: Request, org: str = Depends(current_org)) -> FeedbackObject:
    """Rate a captured answer of this key's org, with an optional correction; the latest rating wins."""
    settings = request.app.state.settings
    capture = request.app.state.capture
    row = await asyncio.to_thread(store_feedback, settings.db, org, body, settings.raw_for(org))
    if row is None and capture is not None:
        await asyncio.to_thread(capture.flush)   # the answer may still be on its way to the database
        row = await asyncio.to_thread(store_feedback, settings.db, org, body, settings.raw_for(org))
    if row is None:
        raise not_found("completion", body.id, code="completion_not_found")
    return row


def store_feedback(url: str | None, org: str, body: FeedbackRequest, raw: bool) -> FeedbackObject | None:
    """Write (or replace) the feedback on the org's captured answer `body.id`; None when there is none."""
    correction, kinds = (body.correction, []) if raw or body.correction is None else redact(body.correction)
    with traffic.session(url) as s:
        mine = select(traffic.Capture.seq).where(traffic.Capture.id == body.id, traffic.Capture.org == org)
        if s.scalar(mine) is None:
            return None
        row = s.scalar(select(traffic.Feedback).where(traffic.Feedback.id == body.id))
        if row is None:
            row = traffic.Feedback(id=body.id, org=org)
            s.add(row)
        row.rating, row.correction, row.redacted, row.created_at = body.rating, correction, kinds, time.time()
        s.commit()
        return FeedbackObject(id=row.id, rating=body.rating, correction=correction, created_at=int(row.created_at))
