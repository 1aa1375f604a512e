"""Runs, versions and tags in a database: SQLite under the hone home, or any SQLAlchemy URL.

The run folder stays the source of truth (run.json, config.yaml); the registry indexes it so runs can
be listed, compared, named and found again. registry/indexing.py writes the rows when a run starts and each
time its record changes (registry/runs.py calls it); here: the tables, the database, and finding, tagging,
diffing and removing runs. `HONE_DB` (or `hone --db URL`) picks the database, e.g.
`postgresql+psycopg://user@host/hone`.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hone.errors import UserError
from hone.home import hone_home
from hone.servicedb import safe_url

REF = re.compile(r"^(?P<name>[^:@\s]+)(?::(?P<version>\d+)|@(?P<tag>[A-Za-z0-9_.-]+))?$")


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    tag: str | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.version}" if self.version else f"@{self.tag}" if self.tag else "")


def parse_ref(text: str) -> Ref:
    match = REF.match(text.strip())
    if not match:
        raise UserError(f"{text!r} is not a run reference; use an id, NAME, NAME:VERSION or NAME@TAG")
    version = match["version"]
    return Ref(match["name"], int(version) if version else None, match["tag"])


def resolve_ref(text: str):
    """The registered Run that `text` names, or None when nothing matches."""
    return find_by_ref(parse_ref(text))


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(40), default="created")
    path: Mapped[str] = mapped_column(Text, unique=True)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    data: Mapped[dict] = mapped_column(JSON, default=dict)          # role -> {path, sha256, bytes}
    base_model: Mapped[Optional[str]] = mapped_column(Text)
    base_model_hash: Mapped[Optional[str]] = mapped_column(String(64))
    method: Mapped[Optional[str]] = mapped_column(String(40))
    objective: Mapped[Optional[str]] = mapped_column(String(40))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    artifacts: Mapped[dict] = mapped_column(JSON, default=dict)     # name -> {path, bytes}; "exports": [...]
    parent_id: Mapped[Optional[str]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    hone_version: Mapped[Optional[str]] = mapped_column(String(40))
    libraries: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self, tags: list[str] | None = None) -> dict[str, Any]:
        out = {column.name: getattr(self, column.name) for column in Run.__table__.columns}
        for key in ("created_at", "updated_at", "finished_at"):
            out[key] = out[key].isoformat(timespec="seconds") if out[key] else None
        return {**out, "ref": self.ref, "tags": tags or []}


class Tag(Base):
    """`name@tag` points at one run of that name; setting it again moves it."""
    __tablename__ = "tags"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))


class ModelHash(Base):
    """Content hashes of model folders, keyed by path, size and mtime so a 500 MB model is read once."""
    __tablename__ = "model_hashes"

    path: Mapped[str] = mapped_column(Text, primary_key=True)
    stamp: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))


_engines: dict[str, Any] = {}
# A server whose --db is not in its own environment reads the registry its workers write (their HONE_DB is
# that --db); a context variable, so one request's choice never leaks into another thread's.
_url_override: ContextVar[str | None] = ContextVar("registry_url", default=None)


def database_url() -> str:
    return _url_override.get() or os.environ.get("HONE_DB") or f"sqlite:///{hone_home() / 'registry.db'}"


@contextmanager
def using_database(url: str | None) -> Iterator[None]:
    """Registry calls inside the block use `url` (None: the usual HONE_DB / hone home rule)."""
    token = _url_override.set(url)
    try:
        yield
    finally:
        _url_override.reset(token)


def session() -> Session:
    url = database_url()
    if url not in _engines:
        try:
            engine = create_engine(url)
            Base.metadata.create_all(engine)
        except (SQLAlchemyError, ImportError) as exc:
            raise UserError(f"cannot open the run registry at {safe_url(url)}: {exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]}") from None
        _engines[url] = engine
    return Session(_engines[url], expire_on_commit=False)


def find_by_ref_in(db: Session, text: str, quiet: bool = False) -> Run | None:

    try:
        ref = parse_ref(text)
    except UserError:
        if quiet:
            return None
        raise
    if ref.version is None and ref.tag is None and (row := db.get(Run, ref.name)) is not None:
        return row
    if ref.tag:
        tag = db.get(Tag, (ref.name, ref.tag))
        return db.get(Run, tag.run_id) if tag else None
    query = select(Run).where(Run.name == ref.name)
    if ref.version is not None:
        return db.scalar(query.where(Run.version == ref.version))
    newest = query.order_by(Run.version.desc())
    return db.scalar(newest.where(Run.status == "succeeded")) or db.scalar(newest)


def find_by_path(folder: Path) -> Run | None:
    """The registered run of a run folder, or None."""
    with session() as db:
        return db.scalar(select(Run).where(Run.path == str(Path(folder).resolve())))


def lineage(run_id: str) -> list[Run]:
    """The run and its ancestors, newest first: each trained on the tuned model of the next."""
    chain: list[Run] = []
    with session() as db:
        row = db.get(Run, run_id)
        while row is not None and row not in chain:
            chain.append(row)
            row = db.get(Run, row.parent_id) if row.parent_id else None
    return chain


def find_by_ref(ref: Ref) -> Run | None:
    with session() as db:
        return find_by_ref_in(db, str(ref))


def get_run(text: str) -> Run:
    """The run a reference names, or a UserError listing what exists."""
    with session() as db:
        row = find_by_ref_in(db, text)
        if row is None:
            names = sorted(set(db.scalars(select(Run.name))))
            hint = f"; registered names: {', '.join(names[:8])}" if names else "; no runs are registered yet"
            raise UserError(f"no run {text!r} in the registry{hint}")
        return row


def tags_of(db: Session, run_id: str) -> list[str]:
    return sorted(db.scalars(select(Tag.tag).where(Tag.run_id == run_id)))


def tags_of_name(name: str) -> list[str]:
    """The tags set on versions of `name`."""
    with session() as db:
        return sorted(db.scalars(select(Tag.tag).where(Tag.name == name)))


def list_runs(name: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict]:
    """Registered runs, newest first, as plain dicts (with their tags)."""
    with session() as db:
        query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if name:
            query = query.where(Run.name == name)
        if status:
            query = query.where(Run.status == status)
        if limit:
            query = query.limit(limit)
        return [row.to_json(tags_of(db, row.id)) for row in db.scalars(query)]


def show_run(text: str) -> dict:
    row = get_run(text)
    with session() as db:
        return row.to_json(tags_of(db, row.id))


def set_tag(text: str, tag: str, remove: bool = False) -> tuple[Run, str | None]:
    """Point `name@tag` at the run `text` names (moving it from another version); return (run, previous id)."""
    row = get_run(text)
    with session() as db:
        current = db.get(Tag, (row.name, tag))
        previous = current.run_id if current else None
        if remove:
            if previous != row.id:
                raise UserError(f"{row.ref} has no tag {tag!r}")
            db.delete(current)
        elif current:
            current.run_id = row.id
        else:
            db.add(Tag(name=row.name, tag=tag, run_id=row.id))
        db.commit()
    return row, previous


def remove_run(text: str, delete_files: bool = True) -> Run:
    """Forget a run (its tags go with it) and, unless told otherwise, delete its folder."""
    row = get_run(text)
    with session() as db:
        for tag in db.scalars(select(Tag).where(Tag.run_id == row.id)):
            db.delete(tag)
        for child in db.scalars(select(Run).where(Run.parent_id == row.id)):
            child.parent_id = None
        db.delete(db.get(Run, row.id))
        db.commit()
    if delete_files and Path(row.path).is_dir():
        shutil.rmtree(row.path)
    return row


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def diff_runs(a: str, b: str) -> dict[str, list[tuple[str, Any, Any]]]:
    """What differs between two runs: config fields, data fingerprints, base model, and metrics."""
    left, right = show_run(a), show_run(b)
    out = {}
    for section in ("config", "data", "metrics"):
        la, lb = _flatten(left[section] or {}), _flatten(right[section] or {})
        rows = [(key, la.get(key), lb.get(key)) for key in sorted(set(la) | set(lb)) if la.get(key) != lb.get(key)]
        if section == "metrics":  # per-item lists (answers, probe items) are noise in a diff
            rows = [r for r in rows if not isinstance(r[1], list) or len(r[1]) <= 4]
        out[section] = rows
    out["run"] = [(key, left[key], right[key]) for key in ("ref", "status", "base_model", "base_model_hash",
                                                           "method", "objective", "parent_id", "hone_version")
                  if left[key] != right[key]]
    return out
