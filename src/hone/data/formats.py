"""Reading data files of every common type as a stream of raw rows, each with its file and line.

JSONL, JSON (an array, or an object of arrays), CSV/TSV, Parquet, a folder saved by `datasets`
(`save_to_disk`) and a folder of .txt/.md documents. JSONL, CSV and Parquet stream: memory does not
grow with the file. A row that cannot be read (bad JSON, bad encoding) arrives as a RecordError in
place of its data, so the caller can skip it and go on; a file that cannot be read at all raises.
"""
from __future__ import annotations

import csv
import json
import os
import re
import stat
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, NamedTuple

from hone.data.json_values import BadJSON, raw_decode
from hone.data.problems import RecordError
from hone.data.records import ChatExample  # noqa: F401  (re-exported: callers import it from here)
from hone.data.shapes import check_messages  # noqa: F401  (re-exported)
from hone.errors import DataError

BOM = b"\xef\xbb\xbf"
TEXT_SUFFIXES = (".txt", ".md")
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\r\n]*")  # JSON's white space


class Row(NamedTuple):
    file: str
    line: int | None        # line in the file (JSONL, JSON, CSV) or 1-based row (Parquet, datasets)
    data: dict | None       # the raw record, or None when `error` says why it could not be read
    error: RecordError | None = None


def file_kind(path: Path) -> str:
    """jsonl, json, csv, tsv, parquet, datasets or text: from the suffix, or a folder's contents."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "datasets"
        if any(p.suffix.lower() in TEXT_SUFFIXES for p in path.rglob("*") if p.is_file()):
            return "text"
        raise DataError("folder holds neither a saved `datasets` dataset nor .txt/.md files", file=str(path))
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".txt": "text", ".md": "text"}.get(suffix, "jsonl")


# Files no code may read for now: a sweep seals its test split while trials run (sweep/study.py), so a
# selection can never see it; reading one is an error, not a silent leak.
_SEALED: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("hone_sealed_files", default=())


class SealedFileRead(DataError):
    """A sealed file (a sweep's test split, before selection ends) was opened."""


@contextmanager
def sealed(paths: list[Path], why: str):
    """While inside, reading any of `paths` raises SealedFileRead saying `why`."""
    token = _SEALED.set(_SEALED.get() + tuple((str(Path(p).resolve()), why) for p in paths))
    try:
        yield
    finally:
        _SEALED.reset(token)


def read_rows(path: Path, notes: list[str] | None = None) -> Iterator[Row]:
    """Every row of a data file or folder; `notes` collects things worth telling (a BOM, a JSON dict)."""
    path = Path(path)
    if (why := dict(_SEALED.get()).get(str(path.resolve()))) is not None:
        raise SealedFileRead(f"this file is sealed: {why}", file=str(path))
    _check_readable(path)
    notes = notes if notes is not None else []
    kind = file_kind(path)
    if kind == "jsonl":
        yield from _jsonl(path, notes)
    elif kind == "json":
        yield from _json(path, notes)
    elif kind in ("csv", "tsv"):
        yield from _csv(path, "\t" if kind == "tsv" else ",", notes)
    elif kind == "parquet":
        yield from _parquet(path)
    elif kind == "datasets":
        yield from _datasets(path)
    else:
        yield from _text(path)


def _check_readable(path: Path) -> None:
    """A regular file or a folder: a missing path, a name the system refuses or a pipe is a one-line error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except OSError as exc:  # a name over 255 bytes (ENAMETOOLONG), a loop of links, no permission, ...
        raise DataError(f"cannot open ({exc.strerror or exc}); check the path", file=str(path)) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # Reading a named pipe blocks until something writes to it: refuse it rather than hang.
        raise DataError("not a regular file (a named pipe, socket or device); save the data to a file",
                        file=str(path))


def _check_start(path: Path, head: bytes, notes: list[str]) -> int:
    """Bytes to skip at the start: a UTF-8 BOM is dropped (and noted); UTF-16 is refused."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("file is UTF-16 encoded; save it as UTF-8", file=str(path))
    if head.startswith(BOM):
        notes.append(f"{path}: starts with a UTF-8 byte-order mark (BOM); it was ignored")
        return len(BOM)
    return 0


def _decode(raw: bytes, file: str, line: int) -> str | RecordError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RecordError("bad_encoding", f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                           "save the file as UTF-8", file=file, line=line)


def _decode_whole(raw: bytes, file: str) -> str | RecordError:
    """A whole file's text, or a RecordError at the line of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return RecordError("bad_encoding", f"not UTF-8 (byte {raw[exc.start]:#04x}); save the file as UTF-8",
                           file=file, line=line)


def _parse_object(text: str, file: str, line: int) -> Row:
    try:
        data, end = raw_decode(_DECODER, text, len(text) - len(text.lstrip()))
    except BadJSON as exc:
        return Row(file, line, None, RecordError("invalid_json", f"invalid JSON ({exc.msg})", file=file, line=line))
    if text[end:].strip():
        return Row(file, line, None, RecordError("invalid_json", f"invalid JSON (extra data at column {end + 1})",
                                                 file=file, line=line))
    if not isinstance(data, dict):
        kinds: dict[type, str] = {list: "a list", str: "a string"}
        kind = kinds.get(type(data), "null" if data is None else type(data).__name__)
        return Row(file, line, None, RecordError("data_type", f"expected a JSON object, got {kind}", file=file,
                                                 line=line))
    return Row(file, line, data)


def _jsonl(path: Path, notes: list[str]) -> Iterator[Row]:
    file = str(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw[_check_start(path, raw, notes):]
            if not raw.strip():
                continue
            text = _decode(raw, file, number)
            if isinstance(text, RecordError):
                yield Row(file, number, None, text)
            else:
                yield _parse_object(text, file, number)


def _json(path: Path, notes: list[str]) -> Iterator[Row]:
    """A JSON array of records, an object of arrays ({"train": [...]}), or JSONL saved as .json."""
    file, raw = str(path), path.read_bytes()
    raw = raw[_check_start(path, raw[:4], notes):]
    text = _decode_whole(raw, file)
    if isinstance(text, RecordError):
        yield Row(file, text.line, None, text)
        return
    start = len(text) - len(text.lstrip())
    if not text.strip():
        return
    if text[start] == "[":
        yield from _json_array(text, start, file, top=True)
        return
    try:
        first, end = raw_decode(_DECODER, text, start)
    except BadJSON as exc:
        yield Row(file, exc.lineno, None, RecordError("invalid_json", f"invalid JSON ({exc.msg})",
                                                      file=file, line=exc.lineno))
        return
    if text[end:].strip():  # more values follow: this is JSON Lines with a .json name
        for number, line_text in enumerate(text.splitlines(), start=1):
            if line_text.strip():
                yield _parse_object(line_text, file, number)
        return
    arrays = [key for key, value in first.items() if isinstance(value, list) and value
              and all(isinstance(v, dict) for v in value[:5])] if isinstance(first, dict) else []
    if arrays and len(arrays) == len(first):
        notes.append(f"{file}: an object of arrays; read {', '.join(arrays)}")
        for key in arrays:
            at = text.find(f'"{key}"', start)
            yield from _json_array(text, text.find("[", at), file, top=False)
        return
    yield _parse_object(text, file, text.count("\n", 0, start) + 1)


def _json_array(text: str, start: int, file: str, top: bool) -> Iterator[Row]:
    """Elements of the array at text[start] with the line each begins on.

    The grammar is JSON's own: one comma between elements, none before `]`, and (for a `top` array)
    nothing but white space after it; the first break of it is an invalid_json row at its line.
    """
    position, line, n = start + 1, text.count("\n", 0, start) + 1, len(text)

    def skip_space() -> None:
        nonlocal position, line
        space = _SPACE.match(text, position)
        assert space is not None  # `*`: matches, if only the empty string
        skip = space.end()
        line += text.count("\n", position, skip)
        position = skip

    def broken(message: str) -> Row:
        return Row(file, line, None, RecordError("invalid_json", f"invalid JSON ({message})", file=file, line=line))

    skip_space()
    if position < n and text[position] == "]":
        return
    while True:
        skip_space()
        if position >= n:
            yield broken("the array is never closed")
            return
        if text[position] in ",]":
            yield broken("a trailing comma before ']'" if text[position] == "]" else "a comma with no value before it")
            return
        try:
            value, end = raw_decode(_DECODER, text, position)
        except BadJSON as exc:
            yield Row(file, exc.lineno, None, RecordError("invalid_json", f"invalid JSON ({exc.msg})", file=file,
                                                          line=exc.lineno))
            return
        if isinstance(value, dict):
            yield Row(file, line, value)
        else:
            yield Row(file, line, None, RecordError("data_type", f"expected a JSON object, got "
                                                    f"{type(value).__name__}", file=file, line=line))
        line += text.count("\n", position, end)
        position = end
        skip_space()
        if position < n and text[position] == ",":
            position += 1
            continue
        if position < n and text[position] == "]":
            position += 1
            break
        yield broken("the array is never closed" if position >= n else "expected ',' or ']' after a value")
        return
    skip_space()
    if top and position < n:
        yield broken("text after the closing ']'")

def _csv(path: Path, delimiter: str, notes: list[str]) -> Iterator[Row]:
    file = str(path)
    csv.field_size_limit(sys.maxsize)
    with path.open("rb") as probe:
        skip = _check_start(path, probe.read(4), notes)
    with path.open("r", encoding="utf-8-sig" if skip else "utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header:
                return
            names = [name.strip() for name in header]
            start = reader.line_num + 1
            for cells in reader:
                here, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(names):
                    yield Row(file, here, None, RecordError(
                        "wrong_type", f"row has {len(cells)} cells but the header has {len(names)} columns",
                        file=file, line=here))
                    continue
                yield Row(file, here, dict(zip(names, cells)))
        except UnicodeDecodeError as exc:
            line = reader.line_num + 1
            yield Row(file, line, None, RecordError("bad_encoding", f"not UTF-8 (byte {exc.object[exc.start]:#04x}); "
                                                    "save the file as UTF-8", file=file, line=line))
        except csv.Error as exc:
            yield Row(file, reader.line_num, None, RecordError("invalid_json", f"malformed CSV ({exc})", file=file,
                                                               line=reader.line_num))


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"not a readable Parquet file ({' '.join(str(exc).split())})", file=str(path)) from None
    row, batches = 0, parquet.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a damaged data page: OSError, ArrowInvalid, ... from deep in pyarrow
            detail = " ".join(str(exc).split())  # pyarrow's messages span lines; ours is one
            raise DataError(f"damaged Parquet data after row {row} ({detail}); re-export the file",
                            file=str(path)) from None
        if batch is None:
            return
        for data in batch.to_pylist():
            row += 1
            yield Row(str(path), row, data)


def _datasets(path: Path) -> Iterator[Row]:
    from datasets import Dataset, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for a damaged folder
        raise DataError(f"not a readable saved dataset ({exc})", file=str(path)) from None
    parts = {"": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    for split, dataset in parts.items():
        file = f"{path}[{split}]" if split else str(path)
        names = _class_names(dataset.features)
        for row, data in enumerate(dataset, start=1):
            for key, decode in names.items():
                if key in data and data[key] is not None:
                    data[key] = decode(data[key])
            yield Row(file, row, data)


def _class_names(features) -> dict:
    """Decoders that turn ClassLabel ids (label, ner_tags) back into their names."""
    from datasets import ClassLabel

    decoders = {}
    for key, feature in features.items():
        if isinstance(feature, ClassLabel):
            decoders[key] = feature.int2str
        inner = getattr(feature, "feature", None)
        if isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
            inner = feature[0]
        if isinstance(inner, ClassLabel):
            decoders[key] = lambda ids, inner=inner: [inner.int2str(i) for i in ids]
    return decoders


def _text(path: Path) -> Iterator[Row]:
    """One text record per .txt/.md document (domain text for continued pre-training)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    for document in files:
        raw = document.read_bytes()
        if raw.startswith(BOM):
            raw = raw[len(BOM):]
        text = _decode_whole(raw, str(document))
        if isinstance(text, RecordError):
            yield Row(str(document), text.line, None, text)
        else:
            yield Row(str(document), None, {"text": text})


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each record of a JSONL file; the first unreadable line raises."""
    for row in _jsonl(Path(path), []) if Path(path).is_file() else read_rows(path):
        if row.error:
            raise row.error
        assert row.data is not None  # a row holds data or the error that replaced it
        yield row.line or 0, row.data
