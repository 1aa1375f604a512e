"""The run folder: one per training run, holding everything about it; created, found, read and updated here.

    <run>/config.yaml     the resolved configuration
    <run>/run.json        status, base model, data, timings, results
    <run>/metrics.jsonl   one line per optimizer step
    <run>/checkpoints/    step-NNNNNNN folders for resume
    <run>/adapter/        the final PEFT adapter (+ tokenizer); `model/` for full fine-tuning
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Callable

from hone import atomic
from hone.config import RunConfig, to_yaml
from hone.errors import UserError
from hone.home import runs_dir
from hone.registry import indexing, store
from hone.registry.store import parse_ref


def new_run_dir(config: RunConfig) -> Path:
    """A fresh run folder, at config.output or under the hone home with a dated, named id."""
    if config.output:
        path = Path(config.output).expanduser()
        if (path / "run.json").exists():
            raise UserError(f"{path} already holds a run; pass another --output, or --resume it")
    else:
        name = config.name or (Path(config.data.train).stem if config.data.train else "run")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
        path = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    path.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path / "config.yaml", to_yaml(config))
    _mirror(lambda: indexing.record_start(path, config.model_dump(mode="json"), config.name or (
        Path(config.data.train).stem if config.data.train else path.name)))
    if config.recipe:  # how the objective was chosen (hone/advice.py), for run.json and the registry
        update_record(path, recipe=config.recipe)
    return path


_registry_warned = False


def _mirror(write: Callable[[], object]) -> None:
    """Mirror the run into the registry database; a registry outage never stops training."""
    global _registry_warned
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - the run folder keeps everything; say so once and go on
        if not _registry_warned:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # SQLAlchemy appends SQL and a URL
            sys.stderr.write(f"warning: run not recorded in the registry ({reason}); `hone runs list` "
                             "imports run folders later\n")
            _registry_warned = True


def find_run(ref: str | Path) -> Path:
    """A run folder from a path, a run id under the hone home, a registered name ('support-bot:3',
    'support-bot@production', 'support-bot' for its newest succeeded version) or 'latest'."""
    path = Path(ref).expanduser()
    if (path / "run.json").is_file() or (path / "config.yaml").is_file():
        return path
    runs = sorted(p for p in runs_dir().iterdir() if (p / "config.yaml").is_file()) if runs_dir().exists() else []
    if str(ref) == "latest" and runs:
        return runs[-1]
    matches = [p for p in runs if p.name == str(ref) or p.name.startswith(str(ref))]
    if len(matches) == 1:
        return matches[0]
    registered = _registered_run(str(ref))
    if registered is not None:
        return registered
    hint = f"; recent runs: {', '.join(p.name for p in runs[-3:])}" if runs else ""
    raise UserError(f"no run {str(ref)!r} (give a run folder, a run id, NAME:VERSION, NAME@TAG or 'latest'){hint}")


def _registered_run(ref: str) -> Path | None:
    """A run folder named in the registry: `support-bot:3`, `support-bot@production`, `support-bot`."""
    try:
        parse_ref(ref)
    except UserError:
        return None
    row = store.resolve_ref(ref)
    if row is None:
        return None
    if not Path(row.path).is_dir():
        raise UserError(f"{row.ref} is registered at {row.path}, but that folder is gone")
    return Path(row.path)


def read_record(run: Path) -> dict:
    path = Path(run) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def update_record(run: Path, **fields) -> dict:
    """Merge `fields` into run.json (atomically) and return the record."""
    record = read_record(run) | fields
    atomic.write_json(Path(run) / "run.json", record)
    _mirror(lambda: indexing.sync_run(Path(run), record))
    return record


def run_reference(text: str) -> str | None:
    """`text` when it names a run rather than a model: a run folder, NAME:VERSION or NAME@TAG; else None
    (a catalogue name, a model folder or file, a hub id)."""
    path = Path(text).expanduser()
    if (path / "run.json").is_file():
        return text
    if not path.exists() and ("@" in text or re.fullmatch(r"[^:@\s]+:\d+", text)):
        return text
    return None
