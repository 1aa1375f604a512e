"""Batched generation with per-row stopping and streaming, for hone serve's engine.

One generate() call answers every row of a batch (each choice of each prompt of each request, left-
padded). A stopping criterion, called after every token, decodes each row, cuts it at a stop string,
ends it at its own max_tokens, and emits the text that can no longer change, so a streaming client sees
tokens as they come and a batch never waits on rows that have finished (transformers pads them).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else nucleus sampling."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Answer:
    """One generated choice: its text so far, why it ended, how many tokens it took."""
    text: str = ""
    finish_reason: str | None = None   # "stop" (end of turn or a stop string) or "length"
    tokens: int = 0


class Job:
    """One API request: `n` answers to each of its prompts, reported as events through `emit`.

    Events (called on the scheduler thread): ("delta", index, text), ("finish", index) when a choice
    ends, ("done", [Answer...]) when all have, ("error", exception). Choice `index` is prompt_number * n + j,
    as OpenAI numbers them.
    """

    def __init__(self, source, prompts: list[list[int]], n: int, max_tokens: list[int], stop: list[str],
                 sampling: Sampling, emit: Callable[[tuple], None], schema: dict | None = None):
        self.source, self.prompts, self.n = source, prompts, n
        self.schema = schema       # a JSON schema every answer must follow (serve/tools.py), or None
        self.max_tokens, self.stop, self.sampling, self.emit = max_tokens, stop, sampling, emit
        self.answers = [Answer() for _ in range(len(prompts) * n)]
        self.cancelled = False     # set when the client went away: its rows stop at the next token
        self._open = len(self.answers)

    @property
    def rows(self) -> int:
        return len(self.answers)

    def finish(self, index: int, text: str, reason: str, tokens: int) -> None:
        answer = self.answers[index]
        if answer.finish_reason is not None:
            return
        answer.text, answer.finish_reason, answer.tokens = text, reason, tokens
        self._open -= 1
        self.emit(("finish", index))
        if self._open == 0:
            self.emit(("done", self.answers))

    def fail(self, exc: Exception) -> None:
        if self._open:
            self._open = 0
            self.emit(("error", exc))


class Row:
    """One choice being generated: its tokens, the text decoded so far and what was streamed."""

    def __init__(self, job: Job, index: int, prompt: list[int], limit: int):
        self.job, self.index, self.prompt, self.limit = job, index, prompt, limit
        self.ids: list[int] = []
        self.tokens = 0
        self.sent = 0          # characters of the text already emitted as deltas
        self.done = False


class RowProgress:
    """A stopping criterion that also streams: per row, decode, cut at stop strings, check limits.

    generate() calls it after every new token with the whole batch; it returns which rows are done
    (transformers then pads those rows) and emits the text that can no longer change."""

    def __init__(self, tokenizer, rows: list[Row], eos: set[int]):
        self.tokenizer, self.rows, self.eos = tokenizer, rows, eos

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if not row.done:
                self.step(row, token)
        done = torch.tensor([row.done for row in self.rows], device=input_ids.device)
        return done  # type: ignore[return-value]  # a bool tensor; torch types tensor() as a plain Tensor

    def step(self, row: Row, token: int) -> None:
        row.tokens += 1
        if row.job.cancelled:
            return self.end(row, self.text(row), "stop")
        if token in self.eos:
            return self.end(row, self.text(row), "stop")
        row.ids.append(token)
        text = self.text(row)
        cut = min((i for i in (text.find(s) for s in row.job.stop) if i >= 0), default=-1)
        if cut >= 0:
            return self.end(row, text[:cut], "stop")
        if row.tokens >= row.limit:
            return self.end(row, text, "length")
        safe = len(text) - held_back(text, row.job.stop)
        if safe > row.sent:
            row.job.emit(("delta", row.index, text[row.sent:safe]))
            row.sent = safe

    def text(self, row: Row) -> str:
        return self.tokenizer.decode(row.ids, skip_special_tokens=True)

    def end(self, row: Row, text: str, reason: str) -> None:
        row.done = True
        if len(text) > row.sent:
            row.job.emit(("delta", row.index, text[row.sent:]))
        row.sent = len(text)
        row.job.finish(row.index, text, reason, row.tokens)

    def finish_all(self) -> None:
        """Rows generate() ended without a verdict (it stops at the longest limit): out of length."""
        for row in self.rows:
            if not row.done:
                self.end(row, self.text(row), "length")


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters to keep unsent: a half-decoded character, or a possible start of a
    stop string (sending it would leak text the stop string is about to cut)."""
    keep = len(text)
    while keep and text[keep - 1] == "\ufffd":
        keep -= 1
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, keep), longest, -1):
            if text.endswith(stop[:k], 0, keep):
                longest = k
                break
    return len(text) - keep + longest


@torch.no_grad()
def generate_rows(model, tokenizer, jobs: list[Job], device: str, adapter_names: list[str] | None = None) -> None:
    """One generate() call for every row of `jobs` (same model, same sampling), left-padded.
    `adapter_names` (one per row) routes the rows of a peft model through different adapters: stacked
    (engines/multilora.py) when they are all plain LoRA, else through peft's mixed-batch path."""
    from transformers import GenerationConfig, StoppingCriteriaList

    from hone.serve.engines.multilora import stacked_rows

    rows = [Row(job, p * job.n + j, prompt, job.max_tokens[p])
            for job in jobs for p, prompt in enumerate(job.prompts) for j in range(job.n)]
    width = max(len(row.prompt) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.prompt):] = torch.tensor(row.prompt)
        mask[i, width - len(row.prompt):] = 1
    eos = eos_ids(model, tokenizer)
    sampling = jobs[0].sampling
    config = GenerationConfig(max_new_tokens=max(row.limit for row in rows), pad_token_id=pad,
                              eos_token_id=sorted(eos), do_sample=not sampling.greedy)
    if not sampling.greedy:
        config.temperature, config.top_p, config.top_k = sampling.temperature, sampling.top_p, 0
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)   # one thread generates, so the global generator is ours
    progress = RowProgress(tokenizer, rows, eos)
    with warnings.catch_warnings():   # peft warns on every prompt-tuned call that it drops position ids
        warnings.filterwarnings("ignore", message="Position ids are not supported")
        stacked = None
        if adapter_names:   # plain LoRA adapters: every row's LoRA term at once (engines/multilora.py)
            stacked = stacked_rows(model, [None if name == "__base__" else name for name in adapter_names])
        extra = {"adapter_names": adapter_names} if adapter_names and stacked is None else {}
        extra.update(constraint_hook(model, tokenizer, rows))
        with stacked or nullcontext():
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                           stopping_criteria=StoppingCriteriaList([progress]), **extra)
    progress.finish_all()


def constraint_hook(model, tokenizer, rows: list[Row]) -> dict:
    """generate()'s `logits_processor` for rows whose job asks for constrained JSON (tool_choice required or
    named, response_format json_schema); nothing when no row does."""
    schemas: dict[int, dict] = {i: row.job.schema for i, row in enumerate(rows) if row.job.schema}
    if not schemas:
        return {}
    from transformers import LogitsProcessorList

    from hone.serve.tools import SchemaConstraint

    return {"logits_processor": LogitsProcessorList([SchemaConstraint(tokenizer, model.config.vocab_size, schemas)])}


def adapter_scope(model, adapter: str | None):
    """The shared base with `adapter` active, or with every adapter off when `adapter` is None."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return nullcontext()
    if adapter is None:
        return model.disable_adapter()
    model.set_adapter(adapter)
    return nullcontext()


def eos_ids(model, tokenizer) -> set[int]:
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, (list, tuple)):
        eos |= set(configured)
    elif configured is not None:
        eos.add(configured)
    return eos
