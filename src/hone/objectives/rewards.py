"""Reward functions for grpo, named in a config as `hone.objectives.rewards:<name>`.

A reward function takes TRL's arguments: `completions` (a list of strings, or of message lists for
chat prompts), `prompts`, and every other dataset column by name; hone's grpo passes each prompt's
reference answer as `answer`. It returns one float per completion. Write your own the same way
and name it by its dotted path (`mypackage.rewards:score`).
"""
from __future__ import annotations

from hone.evaluation.metrics import parse_json_answer


def completion_text(completion) -> str:
    """The text of a completion in either of TRL's formats."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion)
    return str(completion)


def json_fields(completions, answer, **kwargs) -> list[float]:
    """Share of the reference JSON's fields that the completion gets exactly right.

    0.1 for any parseable JSON object even with no field right, so a model that has not yet learned
    the format gets a gradient towards it; 1.0 only when every field matches.
    """
    scores = []
    for completion, reference in zip(completions, answer):
        expected = parse_json_answer(reference)
        got = parse_json_answer(completion_text(completion))
        if not isinstance(expected, dict) or not isinstance(got, dict):
            scores.append(0.0)
            continue
        right = sum(got.get(key) == value for key, value in expected.items())
        scores.append(max(0.1, right / max(1, len(expected))))
    return scores


def exact_answer(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion equals the reference answer up to whitespace, else 0.0."""
    return [float(" ".join(completion_text(c).split()) == " ".join(a.split())) for c, a in zip(completions, answer)]
