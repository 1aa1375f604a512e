"""Reading chat data (OpenAI fine-tuning JSONL: one `{"messages": [...]}` per line).

Every problem names the file, the line and the field. The data issue widens this to every common
shape; the rest of hone only ever sees `ChatExample`s.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from hone.data.records import ChatExample
from hone.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; invalid JSON is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    with path.open("r", encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", file=str(path),
                                line=number) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}", file=str(path),
                                line=number)
            yield number, record


def check_messages(record: dict, file: str, line: int) -> list[dict]:
    """Validate one chat record's `messages`; return them."""
    def fail(message: str, field: str) -> DataError:
        return DataError(message, file=file, line=line, field=field)

    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("expected a non-empty `messages` list (OpenAI chat format)", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fail(f"{where} is not an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise fail(f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role")
        content = message.get("content")
        if not isinstance(content, str) and not (role == "assistant" and message.get("tool_calls")):
            raise fail(f"{where}.content must be a string", f"{where}.content")
        if message.get("weight", 1) not in (0, 1):
            raise fail(f"{where}.weight must be 0 or 1", f"{where}.weight")
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("no assistant message: nothing to learn from this example", "messages")
    return messages


def load_chat(path: Path) -> list[ChatExample]:
    """All examples of a chat JSONL file, validated."""
    examples = []
    for line, record in read_jsonl(path):
        messages = check_messages(record, str(path), line)
        examples.append(ChatExample(messages, str(path), line))
    if not examples:
        raise DataError("no examples in file", file=str(path))
    return examples
