"""Tool-call metrics: did the model call when a call was needed (and not otherwise), the right function,
with arguments that match the tool's schema and equal the reference's, field by field.

A tool conversation is scored turn by turn: each assistant turn is one test item, asked with the
conversation before it (the user's words, earlier calls and the tools' replies) and the tools it may
call. Answers are read with data/tools.py's `parse_answer` (hone's fenced calls, `<tool_call>` tags or a
bare JSON call), so a model whose own template knows tools is scored the same way. Each metric is a
`Metric` with rows [applies, score]: call metrics count only the items whose reference makes a call,
and the bootstrap interval (compare.py) resamples items exactly as for the text metrics.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from hone.data.records import ChatExample
from hone.data.tools import arguments_problem, parse_answer
from hone.evaluation.metrics import Metric, _leaves, token_f1


def is_tool_data(examples: list[ChatExample]) -> bool:
    """Examples that declare tools or make calls: scored with the tool metrics."""
    return any(e.tools or any(m.get("tool_calls") for m in e.messages) for e in examples)


def tool_items(examples: list[ChatExample]) -> list[ChatExample]:
    """One item per trained assistant turn: the conversation up to and including that turn."""
    items = []
    for example in examples:
        for i, message in enumerate(example.messages):
            if message["role"] == "assistant" and message.get("weight", 1):
                items.append(ChatExample(example.messages[: i + 1], example.file, example.line, dict(example.meta),
                                         example.tools))
    return items


def _calls(text: str) -> tuple[str, list[dict]]:
    _, content, calls = parse_answer(text)
    return content, calls


def _key(call: dict) -> tuple[str, str]:
    return call["name"], json.dumps(call["arguments"], sort_keys=True, ensure_ascii=False)


def _fields(calls: list[dict]) -> Counter:
    """(function, field path, value) for every leaf of every call's arguments: what field-level F1 counts."""
    found: Counter = Counter()
    for call in calls:
        arguments = call["arguments"] if isinstance(call["arguments"], dict) else {"": call["arguments"]}
        for path, value in _leaves(arguments).items():
            found[(call["name"], path, json.dumps(value, sort_keys=True))] += 1
    return found


def _f1(predicted: Counter, expected: Counter) -> float:
    common = sum((predicted & expected).values())
    if not predicted or not expected or not common:
        return float(predicted == expected)
    precision, recall = common / sum(predicted.values()), common / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def _valid(calls: list[dict], schemas: dict[str, dict | None]) -> bool:
    return bool(calls) and all(c["name"] in schemas and isinstance(c["arguments"], dict)
                               and arguments_problem(c["arguments"], schemas[c["name"]] or {}) is None for c in calls)


def item_scores(prediction: str, reference: str, tools: list[dict] | None) -> dict[str, tuple[float, float]]:
    """metric -> (applies, score) for one item."""
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in tools or []}
    got_text, got = _calls(prediction)
    want_text, want = _calls(reference)
    needs = float(bool(want))
    return {
        "tool_decision": (1.0, float(bool(got) == bool(want))),
        "function_choice": (needs, float(Counter(c["name"] for c in got) == Counter(c["name"] for c in want))),
        "arguments_valid": (needs, float(_valid(got, schemas))),
        "arguments_exact": (needs, float(Counter(map(_key, got)) == Counter(map(_key, want)))),
        "arguments_f1": (needs, _f1(_fields(got), _fields(want))),
        "answer_token_f1": (1.0 - needs, token_f1(got_text, want_text) if not got else 0.0),
    }


DESCRIPTIONS = {
    "tool_decision": "a call made when the reference makes one, and none when it answers in words",
    "function_choice": "the functions called are the reference's (items that need a call)",
    "arguments_valid": "every call names a declared tool with arguments that match its schema (items that need a call)",
    "arguments_exact": "calls equal to the reference's, every argument exact (items that need a call)",
    "arguments_f1": "F1 of the argument fields (function, path, value) against the reference's",
    "answer_token_f1": "token F1 of the words of answers that need no call (items that need none)",
}


def tool_metrics(items: list[ChatExample]) -> list[Metric]:
    """The tool-call metrics for these test items (their tools give the schemas)."""
    tools = [item.tools for item in items]

    def make(name: str) -> Metric:
        def statistics(predictions: list[str], references: list[str]) -> np.ndarray:
            rows = [item_scores(p, r, t)[name] for p, r, t in zip(predictions, references, tools)]
            return np.array(rows, dtype=float).reshape(-1, 2)

        def aggregate(rows: np.ndarray) -> float:
            applies = rows[:, 0].sum()
            return float((rows[:, 0] * rows[:, 1]).sum() / applies) if applies else float("nan")

        return Metric(name, DESCRIPTIONS[name], aggregate, lambda rows: rows[:, 0] * rows[:, 1], statistics,
                      mean=False)

    return [make(name) for name in DESCRIPTIONS]
