"""Problems found in data files: each names file, line (or row) and field; grouped and counted.

The kinds include OpenAI's data-prep error classes under the cookbook's own names (data_type,
missing_messages_list, message_missing_key, message_unrecognized_key, unrecognized_role,
missing_content, example_missing_assistant_message), so users coming from there recognise them.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hone.errors import DataError

# What each kind means, for report headings (and the docs' table).
KINDS = {
    "invalid_json": "line is not valid JSON",
    "bad_encoding": "text is not UTF-8",
    "data_type": "record is not a JSON object",
    "empty_record": "record has no content",
    "unrecognized_shape": "keys match no known shape",
    "mixed_shapes": "record's shape differs from the file's",
    "missing_messages_list": "`messages` missing or empty",
    "message_missing_key": "a message lacks role, content or tool_call_id",
    "message_unrecognized_key": "a message has a key OpenAI does not accept",
    "unrecognized_role": "a message role is not system, user, assistant or tool",
    "missing_content": "a message has no text (and no tool calls)",
    "example_missing_assistant_message": "no assistant message to learn from",
    "wrong_type": "a field has the wrong type",
    "invalid_weight": "`weight` is not 0 or 1, or not on an assistant message",
    "invalid_tool_call": "a tool call is malformed",
    "invalid_tool": "a declared tool is malformed (name, or parameters not a JSON schema)",
    "undeclared_tool": "a tool call names a function `tools` does not declare",
    "arguments_mismatch": "a tool call's arguments do not match the function's JSON schema",
    "unknown_tool_call_id": "a `tool` reply answers no earlier call",
    "chosen_equals_rejected": "preferred and rejected answers are identical",
    "length_mismatch": "`tokens` and `tags` differ in length",
    "nested_too_deep": "a value is nested more than 64 levels deep",
    "too_long": "longer than the model's context",
    "trains_no_token": "the prompt fills max_seq_len: truncation leaves no answer token to train",
    "unreadable_file": "the file cannot be read",
}


class RecordError(DataError):
    """One bad record: a DataError that also says which kind of problem it is."""

    def __init__(self, kind: str, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.kind = kind
        self.text = message
        super().__init__(message, file=file, line=line, field=field)


@dataclass
class Problem:
    kind: str
    message: str
    file: str
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    @classmethod
    def from_error(cls, error: RecordError) -> "Problem":
        return cls(error.kind, error.text, error.file or "", error.line, error.field)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "line": self.line, "field": self.field,
                "message": self.message}


@dataclass
class ValidationReport:
    """Counts of good and skipped records, problems grouped by kind (the first few of each kept)."""
    files: list[str] = field(default_factory=list)
    shape: str | None = None
    records: int = 0            # records read, good or bad
    valid: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    keep: int = 20              # problems kept per kind; the rest are only counted
    listener: Callable[[Problem], None] | None = None  # called with every problem (cleaning logs each one)

    def add(self, problem: Problem) -> None:
        if self.listener:
            self.listener(problem)
        self.counts[problem.kind] += 1
        kept = self.examples.setdefault(problem.kind, [])
        if len(kept) < self.keep:
            kept.append(problem)

    @property
    def skipped(self) -> int:
        return self.records - self.valid

    @property
    def problems(self) -> int:
        return sum(self.counts.values())

    def first(self) -> Problem | None:
        found = [p for group in self.examples.values() for p in group]
        return min(found, key=lambda p: (p.file, p.line or 0)) if found else None

    def summary_line(self) -> str:
        """One line: how many records were skipped and why, for the training log."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        first = self.first()
        return (f"skipped {self.skipped} of {self.records} records ({kinds}); first: {first}"
                if first else f"{self.valid} records, no problems")

    def as_dict(self) -> dict:
        return {"files": self.files, "shape": self.shape, "records": self.records, "valid": self.valid,
                "skipped": self.skipped, "counts": dict(self.counts.most_common()), "notes": self.notes,
                "problems": {kind: [p.as_dict() for p in group] for kind, group in self.examples.items()}}
