"""`hone data synth`: question-answer pairs grounded in a knowledge base's chunks, from a teacher, filtered.

chunks -> the teacher writes pairs for each (replies cached beside the output, so an interrupted run
resumes) -> parse -> filter, in order: answer grounded in its chunk, not a near-duplicate of a kept
question, not a near-duplicate of an evaluation question -> chat examples with their chunk id ->
a report of what was kept and why the rest was dropped.

Near-duplicates are hone's own (data/neardup.py, the engine of `hone data check`): MinHash over
character 5-grams for short texts, Jaccard >= 0.8. Grounding is lexical: the share of the answer's
words (SQuAD normalisation) found in the chunk; a teacher that answers from its own knowledge rather
than the passage is dropped, which is the point of grounding.
"""
from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone import atomic
from hone.data.neardup import NearDuplicates
from hone.errors import UserError
from hone.kb.store import KnowledgeBase, Passage

Teacher = Callable[[list[list[dict]]], list[str]]   # conversations -> one reply each
PROMPT = ("Write {n} question-answer pairs about the passage below. Each question must be answerable from "
          "the passage alone and make sense without it. Each answer must be short and use the passage's own words.\n"
          "Reply with JSON only: a list of objects with the keys \"question\" and \"answer\".\n\nPassage:\n{passage}")
MIN_GROUNDING = 0.6     # share of the answer's words that must appear in its chunk
REASONS = {"unparsable": "the teacher's reply held no question/answer pairs",
           "empty": "question or answer empty",
           "ungrounded": "answer not found in its chunk",
           "duplicate": "near-duplicate of a kept question",
           "leak": "near-duplicate of an evaluation question"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_Q = r"(?:\d+[.)]\s*)?Q(?:uestion)?\s*[:.]"
_QA = re.compile(rf"(?:^|\n)\s*{_Q}\s*(.+?)\s*\n\s*A(?:nswer)?\s*[:.]\s*(.+?)(?=\n\s*{_Q}|\Z)", re.S | re.I)


@dataclass
class Candidate:
    question: str
    answer: str
    source: str          # the chunk id
    reason: str | None = None   # why it was dropped; None: kept

    def example(self, passages: list[Passage] | None = None) -> dict:
        """A chat example; with `passages`, its question carries them as `hone chat --kb` would (prompt.py)."""
        from hone.kb.prompt import with_passages

        asked = [{"role": "user", "content": self.question}]
        return {"messages": [*with_passages(asked, passages or []), {"role": "assistant", "content": self.answer}],
                "source": self.source}


@dataclass
class SynthResult:
    kb: str
    teacher: str
    chunks: int
    candidates: list[Candidate] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)   # chunk ids whose reply gave nothing
    output: Path | None = None
    seconds: float = 0.0

    @property
    def kept(self) -> list[Candidate]:
        return [c for c in self.candidates if c.reason is None]

    def dropped(self) -> dict[str, int]:
        counts = Counter(c.reason for c in self.candidates if c.reason)
        if self.unparsable:
            counts["unparsable"] = len(self.unparsable)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}

    def to_json(self) -> dict:
        return {"kb": self.kb, "teacher": self.teacher, "chunks": self.chunks, "pairs": len(self.candidates),
                "kept": len(self.kept), "dropped": self.dropped(), "reasons": REASONS,
                "output": str(self.output) if self.output else None, "seconds": round(self.seconds, 1),
                "dropped_examples": [{"question": c.question, "answer": c.answer, "source": c.source,
                                      "reason": c.reason} for c in self.candidates if c.reason][:200],
                "unparsable_chunks": self.unparsable[:200]}


def words(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def grounding(answer: str, passage: str) -> float:
    """Share of the answer's words that occur in the passage."""
    said, source = words(answer), set(words(passage))
    return sum(w in source for w in said) / len(said) if said else 0.0


def parse_pairs(reply: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from a teacher's reply: a JSON list or objects (fenced or not), else Q:/A: lines."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (start := _next_json(reply, at)) >= 0:
        try:
            value, at = decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str):
                found.append((item["question"].strip(), item["answer"].strip()))
    if not found:
        found = [(q.strip(), a.strip()) for q, a in _QA.findall(reply)]
    return found


def _next_json(text: str, start: int) -> int:
    positions = [p for p in (text.find("[", start), text.find("{", start)) if p >= 0]
    return min(positions) if positions else -1


def evaluation_questions(path: Path) -> list[str]:
    """The questions of an evaluation file (chat records' last user turn, or `question`/`prompt` fields)."""
    from hone.data.formats import read_jsonl

    questions = []
    for line, record in read_jsonl(Path(path)):
        messages = record.get("messages")
        if isinstance(messages, list):
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                questions.append(users[-1])
                continue
        text = record.get("question", record.get("prompt"))
        if not isinstance(text, str):
            raise UserError("expected `messages` with a user turn, or a `question` or `prompt` field",
                            file=str(path), line=line)
        questions.append(text)
    return questions


def filter_candidates(candidates: list[Candidate], passages: dict[str, str], exclude: list[str],
                      min_grounding: float = MIN_GROUNDING) -> None:
    """Set each candidate's `reason` (None = kept), in order: empty, ungrounded, leak, duplicate."""
    near = NearDuplicates()
    for question in exclude:
        near.add(question)
    for candidate in candidates:
        near.add(candidate.question)
    groups = near.groups().tolist()
    near.close()
    leaked, kept_groups = set(groups[:len(exclude)]), set()
    for candidate, group in zip(candidates, groups[len(exclude):]):
        if not candidate.question or not candidate.answer:
            candidate.reason = "empty"
        elif grounding(candidate.answer, passages[candidate.source]) < min_grounding:
            candidate.reason = "ungrounded"
        elif group in leaked:
            candidate.reason = "leak"
        elif group in kept_groups:
            candidate.reason = "duplicate"
        else:
            kept_groups.add(group)


def synthesise(kb: KnowledgeBase, teacher: Teacher, teacher_name: str, output: Path | None, per_chunk: int = 3,
               limit: int | None = None, exclude: Path | None = None, min_grounding: float = MIN_GROUNDING,
               batch_size: int = 8, with_passages: int = 0, console: Console | None = None) -> SynthResult:
    """Ask `teacher` for `per_chunk` pairs on each chunk (or `limit` chunks spread over the kb), filter them,
    and write the kept ones to `output` as chat JSONL with their chunk id (None: a dry run, nothing written).

    `with_passages` K > 0 writes each question with K passages in its prompt, as retrieval would give them at
    inference (the other K-1 are distractors), its own chunk always among them (RAFT, Zhang et al. 2024,
    trains with distractors; this keeps the source passage in every example)."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    chunks = kb.chunks()
    if limit:
        step = max(1, len(chunks) // limit)
        chunks = chunks[::step][:limit]
    excluded = evaluation_questions(exclude) if exclude else []
    cache = Path(f"{output}.teacher.jsonl") if output else None
    replies = _cached_replies(cache, teacher_name, per_chunk)
    todo = [c for c in chunks if c.id not in replies]
    with Progress(TextColumn("[bold]synth[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("synth", total=len(chunks), completed=len(chunks) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            answers = teacher([_ask(c, per_chunk) for c in batch])
            replies.update({c.id: a for c, a in zip(batch, answers)})
            if cache is not None:
                with cache.open("a", encoding="utf-8") as handle:   # appended per batch: the resume point
                    for chunk, answer in zip(batch, answers):
                        handle.write(json.dumps({"chunk": chunk.id, "teacher": teacher_name, "per_chunk": per_chunk,
                                                 "reply": answer}, ensure_ascii=False) + "\n")
            bar.advance(task, len(batch))
    result = SynthResult(kb.name, teacher_name, len(chunks))
    for chunk in chunks:
        pairs = parse_pairs(replies[chunk.id])
        if not pairs:
            result.unparsable.append(chunk.id)
        result.candidates += [Candidate(q, a, chunk.id) for q, a in pairs[:per_chunk]]
    filter_candidates(result.candidates, {c.id: c.passage for c in chunks}, excluded, min_grounding)
    if output is not None:
        with atomic.writer(output) as handle:
            for candidate in result.kept:
                handle.write(json.dumps(candidate.example(_passages_for(kb, candidate, with_passages, chunks)
                                                          if with_passages else None), ensure_ascii=False) + "\n")
        result.output = output
    result.seconds = time.monotonic() - started
    if output is not None:
        atomic.write_json(Path(f"{output}.synth.json"), result.to_json())
    return result


def _passages_for(kb: KnowledgeBase, candidate: Candidate, k: int, chunks: list[Passage]) -> list[Passage]:
    """The `k` passages retrieval finds for the question, the candidate's own chunk put in last if it missed."""
    found = kb.search(candidate.question, k)
    if all(p.id != candidate.source for p in found):
        found = found[:k - 1] + [next(c for c in chunks if c.id == candidate.source)]
    return found


def _ask(chunk: Passage, n: int) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(n=n, passage=chunk.passage)}]


def _cached_replies(cache: Path | None, teacher_name: str, per_chunk: int) -> dict[str, str]:
    """Replies an earlier, interrupted run of the same teacher, asked the same, already got (a torn last line
    is ignored)."""
    replies: dict[str, str] = {}
    if cache is None or not cache.is_file():
        return replies
    for line in cache.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("teacher") == teacher_name and record.get("per_chunk") == per_chunk:
            replies[record["chunk"]] = record["reply"]
    return replies


def openai_teacher(url: str, model: str, api_key: str | None = None, timeout: float = 120.0) -> Teacher:
    """A teacher at any OpenAI-compatible endpoint (hone serve, llama.cpp, vLLM, a hosted API), through the
    official client; an endpoint that is down or refuses is a one-line error naming the URL."""
    import os

    try:
        import openai
    except ImportError:
        raise UserError("--teacher URL needs the openai client: pip install 'hone[synth]'") from None
    client = openai.OpenAI(base_url=url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                           timeout=timeout, max_retries=1)

    def ask(conversations: list[list[dict]]) -> list[str]:
        replies = []
        for messages in conversations:
            try:
                reply = client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                       temperature=0.0)
            except openai.APIConnectionError as exc:   # includes timeouts
                raise UserError(f"teacher endpoint {url} is unreachable: {exc.__cause__ or exc}") from None
            except openai.APIStatusError as exc:
                raise UserError(f"teacher endpoint {url} answered HTTP {exc.status_code}: "
                                f"{str(exc.message)[:200]}") from None
            replies.append((reply.choices[0].message.content or "") if reply.choices else "")
        return replies

    return ask
