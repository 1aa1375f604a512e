"""How retrieved passages reach a model: the prompt template, and the citations that come back.

The passages go into the user's turn, above the question, each headed by its id in square brackets;
the conversation before it (a run's system prompt included) is left as it is. The template is part of
hone's interface (docs/knowledge.md shows it), so a model tuned on prompts built here (`hone data synth
--with-passages K`) sees at inference exactly what it was trained on.
"""
from __future__ import annotations

from hone.kb.store import Passage

TEMPLATE = ("Answer the question using the passages below. Cite the passages you use by their ids in "
            "square brackets. If the passages do not hold the answer, say so.\n\n"
            "{passages}\n\nQuestion: {question}")
PASSAGE = "[{id}] {passage}"


def format_passages(passages: list[Passage]) -> str:
    return "\n\n".join(PASSAGE.format(id=p.id, passage=p.passage) for p in passages)


def with_passages(messages: list[dict], passages: list[Passage]) -> list[dict]:
    """`messages` with the last user turn rewritten to carry `passages` (a copy; the input is unchanged)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None or not passages:
        return [dict(m) for m in messages]
    out = [dict(m) for m in messages]
    out[last]["content"] = TEMPLATE.format(passages=format_passages(passages), question=messages[last]["content"])
    return out


def last_question(messages: list[dict]) -> str:
    """What retrieval searches for: the last user turn's text."""
    return next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")


def retrieve_for(kb, messages: list[dict], k: int = 4, mode: str = "hybrid") -> tuple[list[dict], list[Passage]]:
    """(messages with passages, the passages) for a conversation: what chat, eval and serve all call."""
    passages = kb.search(last_question(messages), k, mode)
    return with_passages(messages, passages), passages
