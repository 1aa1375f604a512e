"""Edge-case suites: prompts with checks, run on base and tuned; regressions flagged.

A suite is a JSONL file, one case per line:

    {"name": "refuses card numbers", "prompt": "Store my card 4111 1111 1111 1111",
     "checks": [{"not_contains": "4111"}, {"regex": "(?i)cannot|can't"}]}

`prompt` is one user message; `messages` (a chat without the answer) may stand in for it. Checks:
`contains`, `not_contains` (case-sensitive substrings; add `"ignore_case": true` to a check to
relax it), `regex` (Python `re.search`), `exact` (equal up to whitespace), `json_schema` (the
answer holds JSON valid against the schema). A case passes when every check passes; a regression is
a case the base passed and the tuned model fails.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from hone.data.formats import read_jsonl
from hone.errors import DataError
from hone.evaluation.metrics import json_schema_check, normalise

CHECKS = ("contains", "not_contains", "regex", "exact", "json_schema")


@dataclass
class Check:
    kind: str
    value: object
    ignore_case: bool = False

    def describe(self) -> str:
        if self.kind == "json_schema":
            return "json_schema (answer is JSON valid against the schema)"
        return f"{self.kind} {self.value!r}" + (" (any case)" if self.ignore_case else "")

    def passes(self, answer: str) -> bool:
        value = cast(str, self.value)  # a string for every kind but json_schema (the last line)
        if self.kind in ("contains", "not_contains"):
            found = (value.casefold() in answer.casefold()) if self.ignore_case else (value in answer)
            return found if self.kind == "contains" else not found
        if self.kind == "regex":
            return re.search(value, answer, re.IGNORECASE if self.ignore_case else 0) is not None
        if self.kind == "exact":
            a, b = normalise(answer), normalise(value)
            return a.casefold() == b.casefold() if self.ignore_case else a == b
        return bool(json_schema_check(cast(dict, self.value))(answer))


@dataclass
class Case:
    name: str
    messages: list[dict]
    checks: list[Check]
    line: int = 0


@dataclass
class CaseResult:
    name: str
    prompt: str
    checks: list[str]
    tuned_answer: str
    tuned_failed: list[str]              # descriptions of the checks the tuned answer fails
    base_answer: str | None = None
    base_failed: list[str] | None = None

    @property
    def tuned_passed(self) -> bool:
        return not self.tuned_failed

    @property
    def base_passed(self) -> bool | None:
        return None if self.base_failed is None else not self.base_failed

    @property
    def regressed(self) -> bool:
        """The base passed, the tuned model fails."""
        return bool(self.base_passed) and not self.tuned_passed


@dataclass
class SuiteResult:
    file: str
    cases: list[CaseResult] = field(default_factory=list)

    def to_json(self) -> dict:
        base = [c.base_passed for c in self.cases]
        return {"file": self.file, "n": len(self.cases),
                "tuned_passed": sum(c.tuned_passed for c in self.cases),
                "base_passed": None if None in base else sum(base),
                "regressions": [c.name for c in self.cases if c.regressed],
                "cases": [asdict(c) | {"tuned_passed": c.tuned_passed, "base_passed": c.base_passed,
                                       "regressed": c.regressed} for c in self.cases]}


def _check(raw: object, file: str, line: int, where: str) -> Check:
    if not isinstance(raw, dict):
        raise DataError(f"{where} must be an object such as {{\"contains\": \"text\"}}", file=file, line=line,
                        field=where)
    kinds = [k for k in raw if k in CHECKS]
    unknown = [k for k in raw if k not in CHECKS and k != "ignore_case"]
    if unknown or len(kinds) != 1:
        raise DataError(f"{where} needs exactly one of {', '.join(CHECKS)} (got {', '.join(sorted(raw)) or 'nothing'})",
                        file=file, line=line, field=where)
    kind, value = kinds[0], raw[kinds[0]]
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise DataError(f"{where}.json_schema must be a JSON schema object", file=file, line=line, field=where)
        json_schema_check(value, f"{file}:{line}")  # a bad schema fails here, not mid-run
    elif not isinstance(value, str):
        raise DataError(f"{where}.{kind} must be a string", file=file, line=line, field=f"{where}.{kind}")
    elif kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise DataError(f"{where}.regex is not a valid regular expression: {exc}", file=file, line=line,
                            field=f"{where}.regex") from None
    return Check(kind, value, bool(raw.get("ignore_case", False)))


def load_suite(path: Path) -> list[Case]:
    """Every case of a suite file, validated (file, line and field in every error)."""
    file, cases = str(path), []
    for line, record in read_jsonl(Path(path)):
        if isinstance(record.get("prompt"), str):
            messages = [{"role": "user", "content": record["prompt"]}]
        elif isinstance(record.get("messages"), list) and record["messages"]:
            messages = record["messages"]
            if messages[-1].get("role") == "assistant":
                messages = messages[:-1]  # a chat with an answer: ask what came before it
        else:
            raise DataError("each case needs a `prompt` string (or `messages`)", file=file, line=line,
                            field="prompt")
        checks = record.get("checks")
        if not isinstance(checks, list) or not checks:
            raise DataError("each case needs a non-empty `checks` list, e.g. [{\"contains\": \"Paris\"}]",
                            file=file, line=line, field="checks")
        parsed = [_check(c, file, line, f"checks[{i}]") for i, c in enumerate(checks)]
        name = str(record.get("name") or f"line {line}")
        cases.append(Case(name, messages, parsed, line))
    if not cases:
        raise DataError("no cases in suite file", file=file)
    return cases


def score_suite(file: str, cases: list[Case], tuned_answers: list[str],
                base_answers: list[str] | None = None) -> SuiteResult:
    """Check each answer; base_answers None means the base was not run."""
    result = SuiteResult(file)
    for i, case in enumerate(cases):
        describe = [c.describe() for c in case.checks]
        tuned_failed = [c.describe() for c in case.checks if not c.passes(tuned_answers[i])]
        base_failed = None
        if base_answers is not None:
            base_failed = [c.describe() for c in case.checks if not c.passes(base_answers[i])]
        result.cases.append(CaseResult(case.name, case.messages[-1].get("content") or "", describe,
                                       tuned_answers[i], tuned_failed,
                                       base_answers[i] if base_answers is not None else None, base_failed))
    return result
