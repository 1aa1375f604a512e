"""Cleaning on request: drop invalid records, drop exact and near-duplicates, redact PII.

Always into a new file, never over the input, with a log line (JSONL) for every change: which
record, what was done, why. Records keep the user's own shape; only their strings are redacted.
"""
from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from hone import atomic
from hone.data.content import canonical, full_text, short_hash
from hone.data.load import iter_records, iter_records_with_raw
from hone.data.neardup import NearDuplicates
from hone.data.pii import redact
from hone.data.problems import ValidationReport
from hone.errors import DataError, UserError


@dataclass
class CleanResult:
    output: Path
    log: Path
    kept: int = 0
    changes: dict = field(default_factory=dict)


def _redact_value(value, where: str, found: list):
    """Redact every string inside a raw value (dicts and lists walked); `found` gets (field, kinds)."""
    if isinstance(value, str):
        text, kinds = redact(value)
        if kinds:
            found.append((where, kinds))
        return text
    if isinstance(value, list):
        return [_redact_value(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _redact_value(v, f"{where}.{k}" if where else k, found) for k, v in value.items()}
    return value


def clean_file(path: Path, output: Path | None = None, dedup: bool = True, near: bool = True,
               redact_pii: bool = True, shape: str | None = None) -> CleanResult:
    """Write a cleaned copy of `path` (JSONL) and a log of every change beside it."""
    path = Path(path)
    output = Path(output) if output else path.with_name(f"{path.stem}.clean.jsonl")
    if output.resolve() == path.resolve() or (path.is_dir() and output.resolve().is_relative_to(path.resolve())):
        raise UserError("cleaning never overwrites its input; pass another --output", file=str(path))
    log_path = output.with_name(f"{output.stem}.log.jsonl")
    groups, lines = None, array("q")
    if near and dedup:  # pass 1: which records are near-duplicates of an earlier one
        index = NearDuplicates()
        for record in iter_records(path, shape, False, ValidationReport()):
            index.add(full_text(record))
            lines.append(record.line or 0)
        groups = index.groups()
        index.close()
    report = ValidationReport()
    result = CleanResult(output, log_path)
    changes = result.changes
    seen: dict[int, object] = {}
    with atomic.writer(output) as out, atomic.writer(log_path) as log:
        def note(entry: dict) -> None:
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            changes[entry["action"]] = changes.get(entry["action"], 0) + 1

        report.listener = lambda problem: note({"file": problem.file, "line": problem.line,
                                                "action": "dropped_invalid", "reason": problem.message})
        for i, (record, raw) in enumerate(iter_records_with_raw(path, shape, False, report)):
            where = {"file": record.file, "line": record.line or None}
            key = short_hash(canonical(record))
            if dedup and key in seen:
                note({**where, "action": "dropped_duplicate", "duplicate_of": seen[key]})
                continue
            seen.setdefault(key, record.line or record.file)
            if groups is not None and groups[i] != i:
                note({**where, "action": "dropped_near_duplicate", "similar_to_line": lines[int(groups[i])] or None})
                continue
            if redact_pii:
                found: list = []
                raw = _redact_value(raw, "", found)
                for field_name, kinds in found:
                    note({**where, "action": "redacted", "field": field_name, "kinds": sorted(set(kinds)),
                          "count": len(kinds)})
            out.write(json.dumps(raw, ensure_ascii=False, default=str) + "\n")
            result.kept += 1
        if not result.kept:
            raise DataError("no records left after cleaning; nothing written", file=str(path))
    return result

