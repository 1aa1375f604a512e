"""What a canonical record says, in the views the quality checks, splits and cleaning compare.

`input_text` is what the model is asked, `output_text` what it should answer, `canonical` the whole
record without where it came from; `Fingerprint` hashes records in order for lineage (the registry
records a split's fingerprint, so the same content gives the same id whatever file it sits in).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Iterable

from hone.data.records import ChatExample, LabelExample, PreferenceExample, Record, TagExample, TextExample

WHERE = ("file", "line", "meta")


def canonical(record: Record) -> str:
    """The record as compact JSON with sorted keys, without file, line and meta."""
    # The fields as they are: json.dumps walks them itself, and dataclasses.asdict's deep copy took
    # half of the check's time on 100,000 records.
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    data = {key: value for key, value in data.items() if key not in WHERE and value is not None}
    data["type"] = type(record).__name__
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def short_hash(text: str) -> int:
    """A 64-bit hash (blake2b) as an unsigned int: small enough to keep one per record of a huge file."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _messages_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)


def input_text(record: Record) -> str:
    """What the example asks: the prompt side, or the whole text for raw text."""
    if isinstance(record, ChatExample):
        return _messages_text(record.prompt_messages)
    if isinstance(record, PreferenceExample):
        return _messages_text(record.prompt)
    if isinstance(record, TagExample):
        return " ".join(record.tokens)
    return record.text


def output_text(record: Record) -> str | None:
    """What the example expects back (the last answer, the label, the tags); None for raw text."""
    if isinstance(record, ChatExample):
        return record.answer
    if isinstance(record, PreferenceExample):
        return record.chosen
    if isinstance(record, LabelExample):
        return record.label
    if isinstance(record, TagExample):
        return " ".join(record.tags)
    return None


def label_of(record: Record) -> str | None:
    return record.label if isinstance(record, LabelExample) else None


def full_text(record: Record) -> str:
    """All the words of a record, for near-duplicate detection."""
    if isinstance(record, ChatExample):
        return _messages_text(record.messages)
    if isinstance(record, PreferenceExample):
        return f"{_messages_text(record.prompt)}\n{record.chosen}\n{record.rejected}"
    if isinstance(record, TextExample):
        return record.text
    return f"{input_text(record)}\n{output_text(record)}"


def text_fields(record: Record) -> Iterable[tuple[str, str]]:
    """(field, text) for every string a person wrote in the record: where PII can hide."""
    if isinstance(record, ChatExample):
        for i, message in enumerate(record.messages):
            if message.get("content"):
                yield f"messages[{i}].content", message["content"]
            for j, call in enumerate(message.get("tool_calls") or []):   # arguments carry addresses, e-mails
                yield f"messages[{i}].tool_calls[{j}].function.arguments", call["function"]["arguments"]
    elif isinstance(record, PreferenceExample):
        for i, message in enumerate(record.prompt):
            if message.get("content"):
                yield f"prompt[{i}].content", message["content"]
        yield "chosen", record.chosen
        yield "rejected", record.rejected
    elif isinstance(record, TagExample):
        yield "tokens", " ".join(record.tokens)
    else:
        yield "text", record.text


def training_text(record: Record) -> str | list[dict]:
    """What gets tokenized for training: chat messages (rendered with the template) or plain text."""
    if isinstance(record, ChatExample):
        return record.messages
    if isinstance(record, PreferenceExample):
        longer = max(record.chosen, record.rejected, key=len)
        return record.prompt + [{"role": "assistant", "content": longer}]
    return input_text(record)


class Fingerprint:
    """sha256 over the canonical records in order: the content id of a data set or a split."""

    def __init__(self):
        self._hash, self.count = hashlib.sha256(), 0

    def add(self, record: Record, canonical_text: str | None = None) -> None:
        """Add one record; pass `canonical_text` when canonical(record) is already at hand."""
        text = canonical(record) if canonical_text is None else canonical_text
        self._hash.update(text.encode("utf-8") + b"\n")
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def fingerprint(records: Iterable[Record]) -> str:
    result = Fingerprint()
    for record in records:
        result.add(record)
    return result.hexdigest()
