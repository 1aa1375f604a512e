"""The daily health of a served model from its captured traffic: volume, latency, answers, feedback.

Rates are over answers (a request with n=3 has three); latency is per request, from the request's
arrival to its last token. "Never stops" is an answer cut at its max_tokens (finish_reason "length"):
the symptom of a model that was not taught to end its turn (field_notes §2).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict

import numpy as np

from hone.monitor.traffic import Exchange

# How refusals open in chat models' answers; checked on the first words only, so an answer that quotes
# "I cannot" later is not one.
REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i can not|i'?m (?:not able|unable)|"
                     r"i am (?:not able|unable)|as an ai\b|i won'?t be able)", re.IGNORECASE)


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.match(text[:120]))


def health(exchanges: list[Exchange]) -> dict:
    """Requests, latency p50/p95, mean answer tokens, empty/refusal/never-stops rates, feedback."""
    answers = [a for e in exchanges for a in e.answers]
    latency = np.array([e.latency_ms for e in exchanges], dtype=float)
    rated = [e for e in exchanges if e.rating is not None]
    share = lambda hits: round(hits / len(answers), 4) if answers else None  # noqa: E731
    return {
        "requests": len(exchanges),
        "answers": len(answers),
        "latency_p50_ms": round(float(np.percentile(latency, 50)), 1) if len(latency) else None,
        "latency_p95_ms": round(float(np.percentile(latency, 95)), 1) if len(latency) else None,
        "answer_tokens_mean": round(float(np.mean([a.get("tokens", 0) for a in answers])), 1) if answers else None,
        "empty_rate": share(sum(not str(a.get("text") or "").strip() for a in answers)),
        "refusal_rate": share(sum(is_refusal(str(a.get("text") or "")) for a in answers)),
        "never_stops_rate": share(sum(a.get("finish_reason") == "length" for a in answers)),
        "rated": len(rated),
        "bad_share": round(sum(e.rating == "bad" for e in rated) / len(rated), 4) if rated else None,
        "corrections": sum(bool(e.correction) for e in rated),
    }


def by_day(exchanges: list[Exchange]) -> list[dict]:
    """health() per UTC day, oldest first."""
    days: dict[str, list[Exchange]] = defaultdict(list)
    for e in exchanges:
        days[time.strftime("%Y-%m-%d", time.gmtime(e.created_at))].append(e)
    return [{"day": day, **health(days[day])} for day in sorted(days)]
