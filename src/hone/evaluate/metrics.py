"""Per-item task metrics: each returns 1.0 or 0.0 (or a fraction) for one answer against one reference."""
from __future__ import annotations

import json
import re
from typing import Any, Callable

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal up to surrounding and repeated whitespace."""
    return float(normalise(prediction) == normalise(reference))


def parse_json_answer(text: str) -> Any | None:
    """The first JSON value in `text` (code fences and chatter around it allowed), else None."""
    text = _FENCE.sub("", text.strip())
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                continue
    return None


def json_match(prediction: str, reference: str) -> float:
    """1.0 when the answer parses as JSON equal to the reference's JSON (every field exact)."""
    expected = parse_json_answer(reference)
    return float(expected is not None and parse_json_answer(prediction) == expected)


METRICS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "json_match": json_match}


def pick_metric(references: list[str]) -> str:
    """json_match when every reference is a JSON object or array, exact_match otherwise."""
    is_json = all(r.strip()[:1] in "{[" and parse_json_answer(r) is not None for r in references)
    return "json_match" if references and is_json else "exact_match"
