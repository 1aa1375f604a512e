"""One entry point for data: `load_records(path)` -> canonical records (data/records.py).

The shape of each record is recognised from its keys; the data issue widens the file types (CSV,
Parquet, folders), the shapes and the validation behind this same function.
"""
from __future__ import annotations

from pathlib import Path

from hone.data.formats import check_messages, read_jsonl
from hone.data.records import (ChatExample, LabelExample, PreferenceExample, Record, TagExample,
                               TextExample)
from hone.errors import DataError

# Single-turn shapes that become a user message and an assistant answer.
PAIR_SHAPES = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer"),
               "input_output": ("input", "output")}
SHAPES = ("chat", "alpaca", *PAIR_SHAPES, "preference", "label", "tags", "text")


def detect_shape(record: dict) -> str | None:
    """The shape a record's keys say it has, or None."""
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    for shape, (ask, answer) in PAIR_SHAPES.items():
        if {ask, answer} <= keys:
            return shape
    if {"tokens", "tags"} <= keys:
        return "tags"
    if {"text", "label"} <= keys:
        return "label"
    if "text" in keys:
        return "text"
    return None


def _string(record: dict, key: str, file: str, line: int) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"`{key}` must be a string, got {type(value).__name__}", file=file, line=line, field=key)
    return value


def to_record(record: dict, shape: str, file: str, line: int) -> Record:
    """Normalise one raw record of a known shape."""
    if shape == "chat":
        return ChatExample(check_messages(record, file, line), file, line, tools=record.get("tools"))
    if shape == "alpaca":
        prompt = _string(record, "instruction", file, line)
        extra = record.get("input") or ""
        prompt = f"{prompt}\n\n{extra}" if extra else prompt
        return ChatExample([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": _string(record, "output", file, line)}], file, line)
    if shape in PAIR_SHAPES:
        ask, answer = PAIR_SHAPES[shape]
        return ChatExample([{"role": "user", "content": _string(record, ask, file, line)},
                            {"role": "assistant", "content": _string(record, answer, file, line)}], file, line)
    if shape == "preference":
        prompt = record.get("prompt", "")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return PreferenceExample(messages, _string(record, "chosen", file, line),
                                 _string(record, "rejected", file, line), file, line)
    if shape == "label":
        return LabelExample(_string(record, "text", file, line), str(record["label"]), file, line)
    if shape == "tags":
        tokens, tags = record["tokens"], record["tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise DataError("`tokens` and `tags` must be lists of the same length", file=file, line=line,
                            field="tags")
        return TagExample([str(t) for t in tokens], [str(t) for t in tags], file, line)
    return TextExample(_string(record, "text", file, line), file, line)


def load_records(path: Path, shape: str | None = None) -> list[Record]:
    """Every record of a JSONL file as canonical records; one shape per file (detected or forced)."""
    file, records, seen = str(path), [], None
    for line, raw in read_jsonl(Path(path)):
        found = shape or detect_shape(raw)
        if found is None:
            raise DataError(f"unrecognised record with keys {sorted(raw)}; expected one of the shapes "
                            f"{', '.join(SHAPES)}", file=file, line=line)
        if seen and found != seen:
            raise DataError(f"record is {found!r} but earlier records are {seen!r}; one shape per file",
                            file=file, line=line)
        seen = found
        records.append(to_record(raw, found, file, line))
    if not records:
        raise DataError("no examples in file", file=file)
    return records


def load_chat_records(path: Path) -> list[ChatExample]:
    """Records of a file whose shape becomes chat (chat, alpaca, prompt/completion, ...): SFT's input."""
    records = load_records(path)
    if not isinstance(records[0], ChatExample):
        kind = type(records[0]).__name__
        raise DataError(f"these are {kind} records, not chat or instruction data; SFT needs a user "
                        "prompt and an assistant answer", file=str(path))
    return records
