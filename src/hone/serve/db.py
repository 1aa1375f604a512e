"""The service's state: keys, files, jobs, events, checkpoints, in one SQLAlchemy database.

SQLite under the hone home by default (`<home>/serve.db`), any SQLAlchemy URL with `--db` / `HONE_DB`
(e.g. `postgresql+psycopg://user@host/hone`) so workers on other machines share it. Tables are the
service's own; the run registry (hone.registry) keeps indexing the run folders the jobs train in.
Every row that holds user data carries `org`: queries always filter by it, so another org's object
is simply not found.

Each table has an integer `seq` (insertion order, the pagination cursor) and the public string `id`.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import JSON, Float, Integer, String, Text, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hone.errors import UserError
from hone.home import hone_home


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "serve_keys"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)           # "key-..." (shown by `keys list`)
    org: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)       # of the secret; the secret is never stored
    prefix: Mapped[str] = mapped_column(String(16))                    # first characters, to recognise a key
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[Optional[int]] = mapped_column(Integer)


class File(Base):
    __tablename__ = "serve_files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(Text)                        # as the client named it; never a path
    stored: Mapped[str] = mapped_column(String(64))                    # name under <home>/serve/files/
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[Optional[int]] = mapped_column(Integer)
    shape: Mapped[Optional[str]] = mapped_column(String(40))           # the data shape hone detected
    examples: Mapped[Optional[int]] = mapped_column(Integer)


class Job(Base):
    __tablename__ = "serve_jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(Text)                           # base model as the client named it
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[Optional[str]] = mapped_column(String(40))
    suffix: Mapped[Optional[str]] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[Optional[dict]] = mapped_column(JSON)                 # the client's `metadata`
    method: Mapped[dict] = mapped_column(JSON)                         # {"type", "<type>": {"hyperparameters"}}
    # validating_files queued running paused succeeded failed cancelled
    status: Mapped[str] = mapped_column(String(20), index=True)
    request: Mapped[Optional[str]] = mapped_column(String(10))         # "cancel" or "pause", for the worker to act on
    error: Mapped[Optional[dict]] = mapped_column(JSON)
    fine_tuned_model: Mapped[Optional[str]] = mapped_column(Text)
    model_deleted: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[Optional[int]] = mapped_column(Integer)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    run_dir: Mapped[Optional[str]] = mapped_column(Text)
    worker: Mapped[Optional[str]] = mapped_column(String(80))          # who holds the lease
    lease_until: Mapped[Optional[float]] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)          # claims so far (1 + resumes)
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[Optional[int]] = mapped_column(Integer)
    finished_at: Mapped[Optional[int]] = mapped_column(Integer)
    estimated_finish: Mapped[Optional[int]] = mapped_column(Integer)


class Event(Base):
    __tablename__ = "serve_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))                      # info | warn | error
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(10), default="message")   # message | metrics
    data: Mapped[Optional[dict]] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "serve_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


_makers: dict[str, sessionmaker] = {}


def database_url(url: str | None = None) -> str:
    """`--db`, else HONE_DB, else SQLite in the hone home (the run registry's rule; its own file)."""
    url = url or os.environ.get("HONE_DB") or f"sqlite:///{hone_home() / 'serve.db'}"
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        # SQLAlchemy's default driver is psycopg2; hone ships psycopg 3
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def session(url: str | None = None) -> Session:
    """A session on the service database; tables are created on first use."""
    url = database_url(url)
    if url not in _makers:
        try:
            engine = create_engine(url, **({"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}))
            if url.startswith("sqlite"):
                event.listen(engine, "connect", _sqlite_pragmas)
            try:
                Base.metadata.create_all(engine)
            except OperationalError as exc:
                # two processes starting at once (two `hone worker`s) both found no table, one created it first:
                # looking again finds it
                if "already exists" not in str(exc):
                    raise
                Base.metadata.create_all(engine)
        except (SQLAlchemyError, ImportError) as exc:
            from hone.registry.store import _safe

            raise UserError(f"cannot open the service database at {_safe(url)}: {exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]}") from None
        _makers[url] = sessionmaker(engine, expire_on_commit=False)
    return _makers[url]()


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: the server reads while workers write; busy_timeout makes writers wait instead of failing.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def state_dir(kind: str) -> Path:
    """<home>/serve/<kind>: uploaded file bytes ('files') and job run folders ('jobs')."""
    path = hone_home() / "serve" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """'file-', 'ftjob-' ... plus random letters and digits: unguessable, never derived from input."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


def add_event(db: Session, job_id: str, message: str, level: str = "info", type_: str = "message",
              data: dict[str, Any] | None = None) -> None:
    db.add(Event(job_id=job_id, created_at=now(), level=level, message=message, type=type_, data=data))
