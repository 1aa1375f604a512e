"""Served traffic and its feedback: two tables of the service database, written by `hone serve --capture`.

`hone serve` (serve/capture.py) writes a Capture row per answered chat/completion request of a model it
captures, off the request path, PII redacted unless the org asked for raw text; `POST /v1/feedback` writes a
Feedback row per rated answer (the latest rating wins). `hone monitor`, `hone feedback` and
`hone data from-traffic` read them here. Like every service table, each row carries `org`, and every
query an org can reach filters by it.

The tables live in the service database (serve/db.py creates them beside its own), but are defined here,
in the monitor stage, so that the stages below the server can read traffic without importing it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import JSON, Float, Integer, String, Text, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hone.errors import UserError
from hone.servicedb import open_session


class Base(DeclarativeBase):
    pass


class Capture(Base):
    __tablename__ = "serve_captures"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)          # the answer's id: chatcmpl-... / cmpl-...
    org: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(Text, index=True)              # as the client named it
    served: Mapped[str] = mapped_column(Text)                         # the model id it resolved to
    run_dir: Mapped[Optional[str]] = mapped_column(Text)              # the tuned model's run folder; None: a base model
    kind: Mapped[str] = mapped_column(String(12))                     # chat | completion
    created_at: Mapped[float] = mapped_column(Float, index=True)
    messages: Mapped[list] = mapped_column(JSON)                      # [{role, content}]; a completion's: role "prompt"
    answers: Mapped[list] = mapped_column(JSON)                       # [{text, finish_reason, tokens}] per choice
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[Optional[int]] = mapped_column(Integer)        # the limit each answer had
    redacted: Mapped[list] = mapped_column(JSON, default=list)        # kinds of personal data replaced
    raw: Mapped[int] = mapped_column(Integer, default=0)              # 1: stored unredacted (--capture-raw)


class Feedback(Base):
    __tablename__ = "serve_feedback"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)          # the rated answer's id (one row per answer)
    org: Mapped[str] = mapped_column(String(64), index=True)
    rating: Mapped[str] = mapped_column(String(8))                    # good | bad
    correction: Mapped[Optional[str]] = mapped_column(Text)           # the answer it should have been
    redacted: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float)


def session(url: str | None = None) -> Session:
    """A session on the service database's traffic tables (created on first use)."""
    return open_session(url, Base.metadata)


@dataclass
class Exchange:
    """One answered request: what `hone serve --capture` hands its writer (text as the client sent it,
    redacted later off the request path) and what `hone monitor` reads back (with the feedback on it)."""
    id: str
    org: str
    model: str
    served: str
    run_dir: str | None
    kind: str
    messages: list[dict]
    answers: list[dict]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int | None
    created_at: float = field(default_factory=time.time)
    rating: str | None = None
    correction: str | None = None

    @property
    def prompt(self) -> str:
        """The input as one text: the last user message of a chat, the prompt of a completion."""
        for message in reversed(self.messages):
            if message.get("role") in ("user", "prompt"):
                return str(message.get("content") or "")
        return ""

    @property
    def answer(self) -> str:
        return str(self.answers[0].get("text", "")) if self.answers else ""


def read_exchanges(model: str | None = None, since: float | None = None, org: str | None = None,
                   url: str | None = None, rated: bool = False) -> list[Exchange]:
    """Captured exchanges, oldest first: of `model` (as the client named it, or the model id it was served
    as), since `since` (unix seconds), of `org`; `rated`: only those with feedback."""
    with session(url) as s:
        query = select(Capture, Feedback).outerjoin(Feedback, Feedback.id == Capture.id)
        if model is not None:
            query = query.where((Capture.model == model) | (Capture.served == model))
        if since is not None:
            query = query.where(Capture.created_at >= since)
        if org is not None:
            query = query.where(Capture.org == org)
        if rated:
            query = query.where(Feedback.id.is_not(None))
        rows = s.execute(query.order_by(Capture.seq)).all()
    return [Exchange(id=c.id, org=c.org, model=c.model, served=c.served, run_dir=c.run_dir, kind=c.kind,
                     messages=c.messages, answers=c.answers, latency_ms=c.latency_ms, prompt_tokens=c.prompt_tokens,
                     completion_tokens=c.completion_tokens, max_tokens=c.max_tokens, created_at=c.created_at,
                     rating=f.rating if f is not None else None, correction=f.correction if f is not None else None)
            for c, f in rows]


def purge_older_than(days: float, url: str | None = None) -> int:
    """Delete captures (and their feedback) older than `days`: the retention limit. Returns how many."""
    cutoff = time.time() - days * 86400
    with session(url) as s:
        old = select(Capture.id).where(Capture.created_at < cutoff)
        s.execute(delete(Feedback).where(Feedback.id.in_(old)))
        gone = s.execute(delete(Capture).where(Capture.created_at < cutoff)).rowcount  # type: ignore[attr-defined]  # a DELETE returns a CursorResult
        s.commit()
    return int(gone or 0)


def models_with_traffic(url: str | None = None) -> list[str]:
    """The model names traffic was captured for, for error messages."""
    with session(url) as s:
        return sorted(set(s.scalars(select(Capture.model))))


def parse_since(text: str | None) -> float | None:
    """`--since`: a duration back from now (30m, 24h, 7d) or a date (2026-12-01, ISO 8601 with a time)."""
    if text is None:
        return None
    import re
    from datetime import datetime, timezone

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text)
    if match:
        return time.time() - float(match[1]) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--since {text!r}: give a duration (30m, 24h, 7d, 2w) or a date (2026-12-01)",
                        field="since") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def feedback_rows(exchanges: list[Exchange]) -> list[dict]:
    """Rated exchanges as `hone feedback export` writes them, one JSON object per answer."""
    return [{"id": e.id, "org": e.org, "model": e.model, "served": e.served, "created_at": round(e.created_at, 3),
             "messages": e.messages, "answer": e.answer, "rating": e.rating, "correction": e.correction}
            for e in exchanges if e.rating is not None]
