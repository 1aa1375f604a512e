"""One entry point for data: `load_records(path)` -> canonical records (data/records.py).

Any file type formats.py reads, any shape shapes.py knows (detected from the keys, or forced with
`shape=`). Bad records are skipped and counted, never silently: the count and the first problem
are logged, and `strict=True` turns the first problem into the error. `iter_records` streams for
files too large to hold; `load_with_report` also returns the grouped problems.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from hone.data.formats import read_rows
from hone.data.problems import Problem, RecordError, ValidationReport
from hone.data.records import ChatExample, PreferenceExample, Record
from hone.data.shapes import PAIR_SHAPES, SHAPES, detect_shape, is_empty, to_record  # noqa: F401 (re-exported)
from hone.errors import DataError

log = logging.getLogger("hone.data")


def check_shape_name(shape: str | None) -> str | None:
    if shape is not None and shape not in SHAPES:
        raise DataError(f"unknown format {shape!r}; expected one of {', '.join(SHAPES)}")
    return shape


def iter_records(path: Path, shape: str | None = None, strict: bool = False,
                 report: ValidationReport | None = None) -> Iterator[Record]:
    """Stream the valid records of one file or folder; problems go into `report` (or raise if strict)."""
    for record, _ in iter_records_with_raw(path, shape, strict, report):
        yield record


def iter_records_with_raw(path: Path, shape: str | None = None, strict: bool = False,
                          report: ValidationReport | None = None) -> Iterator[tuple[Record, dict]]:
    """(record, raw row) pairs, for writers that keep the user's own shape."""
    check_shape_name(shape)
    report = report if report is not None else ValidationReport()
    report.files.append(str(path))
    file_shape = shape
    for row in read_rows(Path(path), report.notes):
        report.records += 1
        try:
            if row.error:
                raise row.error
            assert row.data is not None  # read_rows gives data or an error
            if is_empty(row.data):
                raise RecordError("empty_record", "record is empty", file=row.file, line=row.line)
            found = shape or detect_shape(row.data)
            if found is None:
                raise RecordError("unrecognized_shape", f"unrecognised record with keys {sorted(row.data)[:8]}; "
                                  f"expected the keys of one of: {', '.join(SHAPES)} (or force one with --format)",
                                  file=row.file, line=row.line)
            if file_shape is None:
                file_shape = report.shape = found
            elif found != file_shape:
                raise RecordError("mixed_shapes", f"record looks like {found!r} but earlier records are "
                                  f"{file_shape!r}; keep one shape per file", file=row.file, line=row.line)
            record = to_record(row.data, found, row.file, row.line)
        except RecordError as exc:
            if strict:
                raise
            report.add(Problem.from_error(exc))
            continue
        report.valid += 1
        yield record, row.data
    report.shape = file_shape


def load_with_report(path: Path, shape: str | None = None,
                     strict: bool = False) -> tuple[list[Record], ValidationReport]:
    """All valid records of a file and the report of what was skipped; no valid record is an error."""
    report = ValidationReport()
    records = list(iter_records(path, shape, strict, report))
    if not records:
        detail = f" ({report.summary_line()})" if report.problems else ""
        raise DataError(f"no valid examples in file{detail}", file=str(path))
    return records, report


def load_records(path: Path, shape: str | None = None, strict: bool = False) -> list[Record]:
    """Every valid record of a file as canonical records; skipped ones are logged as a warning."""
    records, report = load_with_report(path, shape, strict)
    if report.problems:
        log.warning("%s: %s; see all with: hone data check %s (--strict stops at the first)",
                    path, report.summary_line(), path)
    return records


def load_chat_records(path: Path, shape: str | None = None, strict: bool = False) -> list[ChatExample]:
    """Records of any chat-like shape (chat, ShareGPT, alpaca, prompt/completion, ...): SFT's input.

    Preference pairs are accepted too and become their prompt plus the preferred answer.
    """
    records = load_records(path, shape, strict)
    first = records[0]
    if isinstance(first, PreferenceExample):
        return [ChatExample(r.prompt + [{"role": "assistant", "content": r.chosen}], r.file, r.line)
                for r in records if isinstance(r, PreferenceExample)]
    if not isinstance(first, ChatExample):
        kind = type(first).__name__
        raise DataError(f"these are {kind} records, not chat or instruction data; SFT needs a user "
                        "prompt and an assistant answer", file=str(path))
    return [r for r in records if isinstance(r, ChatExample)]
