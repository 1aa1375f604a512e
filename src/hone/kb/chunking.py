"""Cut sections into overlapping chunks that fit the encoder's context.

Units are paragraphs; a paragraph longer than a chunk is cut into sentences, and a sentence longer
than a chunk into word windows. Units are packed greedily up to `max_tokens` (counted with the
encoder's own tokenizer, so nothing is truncated when it is embedded); each new chunk of a section
starts with the last units of the one before, up to `overlap` tokens, so a fact cut at a boundary is
whole in one of the two. A chunk never crosses a section (heading, record, page).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from hone.kb.documents import Section

Counter = Callable[[list[str]], list[int]]   # texts -> token counts
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    id: str          # "<source>#<n>", n counting from 1 within the source
    source: str
    title: str
    text: str

    @property
    def passage(self) -> str:
        """What is embedded, searched and shown to a model: the heading path, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


def word_counter(texts: list[str]) -> list[int]:
    """Words as tokens: for tests and for callers without an encoder."""
    return [len(t.split()) for t in texts]


def _units(text: str, max_tokens: int, count: Counter) -> list[tuple[str, int]]:
    """(unit, tokens) for a section's text: paragraphs, cut smaller only where one is too long."""
    out: list[tuple[str, int]] = []
    paragraphs = [" ".join(p.split()) for p in _PARAGRAPH.split(text) if p.strip()]
    for paragraph, n in zip(paragraphs, count(paragraphs)):
        if n <= max_tokens:
            out.append((paragraph, n))
            continue
        sentences = [s for s in _SENTENCE.split(paragraph) if s]
        for sentence, m in zip(sentences, count(sentences)):
            if m <= max_tokens:
                out.append((sentence, m))
                continue
            words = sentence.split()
            step = max(1, int(len(words) * max_tokens / m * 0.9))   # tokens per word varies: leave room
            windows = [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
            out += list(zip(windows, count(windows)))
    return out


def chunk_sections(sections: list[Section], max_tokens: int, overlap: int,
                   count: Counter = word_counter) -> list[Chunk]:
    """The chunks of one document's sections, ids numbered per source in reading order."""
    if overlap >= max_tokens:
        raise ValueError(f"overlap ({overlap}) must be smaller than the chunk size ({max_tokens})")
    chunks: list[Chunk] = []
    numbers: dict[str, int] = {}
    for section in sections:
        for text in _pack(_units(section.text, max_tokens, count), max_tokens, overlap):
            numbers[section.source] = numbers.get(section.source, 0) + 1
            chunks.append(Chunk(f"{section.source}#{numbers[section.source]}", section.source, section.title, text))
    return chunks


def _pack(units: list[tuple[str, int]], max_tokens: int, overlap: int) -> list[str]:
    texts: list[str] = []
    current: list[tuple[str, int]] = []
    for unit in units:
        if current and sum(n for _t, n in current) + unit[1] > max_tokens:
            texts.append(" ".join(t for t, _n in current))
            carried: list[tuple[str, int]] = []
            for item in reversed(current):
                if sum(n for _t, n in carried) + item[1] > overlap or item[1] + unit[1] > max_tokens:
                    break
                carried.insert(0, item)
            while carried and sum(n for _t, n in carried) + unit[1] > max_tokens:
                carried.pop(0)
            current = carried
        current.append(unit)
    if current:
        texts.append(" ".join(t for t, _n in current))
    return texts
