"""LLM-as-judge: pairwise base-vs-tuned verdicts from any OpenAI-compatible chat endpoint.

Each item is judged twice with the answers' positions swapped, because judges favour one position
(Zheng et al. 2023, "Judging LLM-as-a-judge", MT-Bench: GPT-4 was consistent under a swap in ~65% of
cases). As in MT-Bench, a win counts only when both orders agree; anything else is a tie. The
judge's reasons for both orders are kept for the report.
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Callable

from hone.errors import UserError
from hone.evaluation.metrics import parse_json_answer

SYSTEM = ("You are an impartial judge. Compare two assistant answers to the same request. Judge "
          "correctness first, then helpfulness and format; ignore length unless it hurts the answer. "
          "Reply with one JSON object only: {\"winner\": \"A\" or \"B\" or \"tie\", \"reason\": \"one sentence\"}.")


def judge_prompt(request: str, answer_a: str, answer_b: str, reference: str | None = None) -> str:
    parts = [f"[Request]\n{request}"]
    if reference:
        parts.append(f"[Reference answer]\n{reference}")
    parts += [f"[Answer A]\n{answer_a}", f"[Answer B]\n{answer_b}", "Which answer is better?"]
    return "\n\n".join(parts)


def openai_chat(url: str, model: str, api_key: str | None = None,
                timeout: float = 120.0) -> Callable[[list[dict]], str]:
    """A function that sends chat messages to `url` (e.g. http://localhost:8000/v1) and returns the reply."""
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
    key = api_key or os.environ.get("HONE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def send(messages: list[dict]) -> str:
        body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise UserError(f"judge endpoint {endpoint} answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise UserError(f"judge endpoint {endpoint} is unreachable: {getattr(exc, 'reason', exc)}") from None
        except json.JSONDecodeError:
            raise UserError(f"judge endpoint {endpoint} did not answer JSON") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise UserError(f"judge endpoint {endpoint} answered without choices[0].message.content") from None

    return send


def read_verdict(reply: str) -> tuple[str, str]:
    """('A' | 'B' | 'tie' | 'unclear', reason) from a judge's reply."""
    parsed = parse_json_answer(reply)
    if isinstance(parsed, dict) and str(parsed.get("winner", "")).strip().lower() in ("a", "b", "tie"):
        winner = str(parsed["winner"]).strip()
        return (winner.upper() if winner.lower() != "tie" else "tie"), str(parsed.get("reason", ""))
    match = re.search(r"winner\W+(A|B|tie)\b", reply, re.IGNORECASE)
    if match:
        winner = match.group(1)
        return (winner.upper() if winner.lower() != "tie" else "tie"), reply.strip()[:300]
    return "unclear", reply.strip()[:300]


@dataclass
class Judgement:
    prompt: str
    verdict: str                  # "tuned", "base" or "tie"
    first: str                    # verdict with the base shown as A: tuned, base, tie or unclear
    second: str                   # verdict with the tuned answer shown as A
    reasons: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return self.first == self.second


@dataclass
class JudgeResult:
    model: str
    judgements: list[Judgement]

    def to_json(self) -> dict:
        n = len(self.judgements)
        wins = sum(j.verdict == "tuned" for j in self.judgements)
        losses = sum(j.verdict == "base" for j in self.judgements)
        return {"model": self.model, "n": n, "tuned_wins": wins, "base_wins": losses, "ties": n - wins - losses,
                "inconsistent": sum(not j.consistent for j in self.judgements),
                "tuned_win_rate": (wins + 0.5 * (n - wins - losses)) / n if n else None,
                "judgements": [asdict(j) for j in self.judgements]}


def judge_pairs(chat: Callable[[list[dict]], str], prompts: list[str], base_answers: list[str],
                tuned_answers: list[str], references: Sequence[str | None] | None = None,
                model: str = "judge") -> JudgeResult:
    """Judge each (base, tuned) pair in both orders; only an order-independent verdict is a win."""
    judgements = []
    for i, prompt in enumerate(prompts):
        reference = references[i] if references else None
        seen = []
        for shown_first, (a, b) in (("base", (base_answers[i], tuned_answers[i])),
                                    ("tuned", (tuned_answers[i], base_answers[i]))):
            reply = chat([{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": judge_prompt(prompt, a, b, reference)}])
            winner, reason = read_verdict(reply)
            other = "tuned" if shown_first == "base" else "base"
            seen.append(({"A": shown_first, "B": other}.get(winner, winner), reason))
        (first, reason1), (second, reason2) = seen
        verdict = first if first == second and first in ("tuned", "base") else "tie"
        judgements.append(Judgement(prompt, verdict, first, second, [reason1, reason2]))
    return JudgeResult(model, judgements)
