"""Run folders entered in the registry: a new run's row (the next version of its name, its config and data
fingerprints, its parent), its record copied in each time run.json changes (registry/runs.py), and older
folders the registry has not seen imported. The folder stays the source of truth; these rows index it."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hone.errors import UserError
from hone.home import runs_dir
from hone.registry.fingerprint import data_fingerprints, file_sha256, folder_sha256, library_versions
from hone.registry.store import ModelHash, Run, session

FINISHED = {"succeeded", "failed"}   # the statuses that stamp finished_at


def _now() -> datetime:
    return datetime.now(timezone.utc)


def model_hash(db: Session, folder: Path) -> str | None:
    """sha256 over a model folder's files, cached by path, total size and newest mtime."""
    folder = Path(folder)
    if not folder.is_dir():
        return file_sha256(folder) if folder.is_file() else None
    files = [p for p in folder.rglob("*") if p.is_file()]
    stamp = f"{sum(p.stat().st_size for p in files)}:{max((p.stat().st_mtime_ns for p in files), default=0)}"
    cached = db.get(ModelHash, str(folder.resolve()))
    if cached and cached.stamp == stamp:
        return cached.sha256
    digest = folder_sha256(folder)
    db.merge(ModelHash(path=str(folder.resolve()), stamp=stamp, sha256=digest))
    return digest


def _artifacts(path: Path) -> dict[str, dict]:
    found = {}
    for name in ("adapter", "model"):
        folder = path / name
        if folder.is_dir():
            found[name] = {"path": str(folder),
                           "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
    checkpoints = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    if checkpoints:
        found["checkpoints"] = {"path": str(path / "checkpoints"), "latest": checkpoints[-1].name,
                                "count": len(checkpoints)}
    return found


def _unique_id(db: Session, path: Path) -> str:
    base = path.name
    candidate, n = base, 1
    while (row := db.get(Run, candidate)) is not None and row.path != str(path):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def record_start(path: Path, config: dict, name: str, created_at: datetime | None = None) -> Run:
    """Register a new run folder (or return its row): the next version of `name`, config, data prints."""
    path = Path(path).resolve()
    data_files = {role: config.get("data", {}).get(role) for role in ("train", "validation", "test")}
    for _attempt in range(3):  # two runs of one name starting together: the unique (name, version) decides
        with session() as db:
            existing = db.scalar(select(Run).where(Run.path == str(path)))
            if existing:
                return existing
            version = (db.scalar(select(func.max(Run.version)).where(Run.name == name)) or 0) + 1
            parent = _parent(db, config.get("model", {}).get("parent"))
            now = created_at or _now()
            row = Run(id=_unique_id(db, path), name=name, version=version, status="created", path=str(path),
                      config=config, data=data_fingerprints(data_files), parent_id=parent.id if parent else None,
                      base_model=config.get("model", {}).get("name"), method=config.get("method", {}).get("name"),
                      libraries=library_versions(), created_at=now, updated_at=now)
            db.add(row)
            try:
                db.commit()
                return row
            except IntegrityError:
                db.rollback()
    raise UserError(f"could not register {path}: its name and version kept colliding")


def sync_run(path: Path, record: dict) -> Run:
    """Copy a run's record (run.json fields) into its registry row; registers the folder if it is new."""
    path = Path(path).resolve()
    with session() as db:
        row = db.scalar(select(Run).where(Run.path == str(path)))
        if row is None:
            db.close()
            config = (yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
                      if (path / "config.yaml").is_file() else {})
            started = datetime.fromtimestamp((path / "config.yaml").stat().st_mtime, timezone.utc) if (
                path / "config.yaml").is_file() else None
            record_start(path, config or {}, _run_name(path, config or {}), started)
            return sync_run(path, record)
        row.status = record.get("status", row.status)
        row.objective = record.get("objective", row.objective)
        row.method = record.get("method", row.method)
        row.base_model = record.get("base_model", row.base_model)
        row.hone_version = record.get("hone_version", row.hone_version)
        if record.get("base_path") and not row.base_model_hash:
            row.base_model_hash = model_hash(db, Path(record["base_path"]))
        metrics = dict(record.get("results") or {})
        if record.get("forgetting"):
            metrics["forgetting"] = record["forgetting"]
        for key in ("train_seconds", "total_seconds", "recipe", "sweep", "merge"):
            if key in record:
                metrics[key] = record[key]
        row.metrics = metrics
        row.artifacts = _artifacts(path) | ({"exports": record["exports"]} if record.get("exports") else {})
        row.updated_at = _now()
        if row.status in FINISHED and row.finished_at is None:
            row.finished_at = row.updated_at
        db.commit()
        return row


def _run_name(path: Path, config: dict) -> str:
    if config.get("name"):
        return str(config["name"])
    train = (config.get("data") or {}).get("train")
    return Path(train).stem if train else path.name


def import_run_folders(folder: Path | None = None) -> int:
    """Register run folders under the hone home that the registry has not seen (older runs); return how many."""
    folder = folder or runs_dir()
    with session() as db:
        known = set(db.scalars(select(Run.path)))
    added = 0
    for path in sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file()):
        if str(path.resolve()) not in known:
            record = (json.loads((path / "run.json").read_text(encoding="utf-8"))
                      if (path / "run.json").is_file() else {})
            sync_run(path, record)
            added += 1
    return added


def _parent(db: Session, folder: str | None) -> Run | None:
    """The registered run whose tuned model this run trains on (`model.parent`: its run folder)."""
    if not folder:
        return None
    return db.scalar(select(Run).where(Run.path == str(Path(folder).resolve())))
