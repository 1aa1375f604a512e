"""Models in memory and text generation for `hone serve`'s inference endpoints.

One base model per base spec, with every LoRA/DoRA adapter trained on it loaded next to it through
peft (`load_adapter` / `set_adapter` by name), so a hundred tuned models cost one base in memory plus
a few MB each. Other tuned artifacts (full fine-tunes, qlora, prompt tuning, freeze, ...) load as
their own models through `hone.methods.artifact.load_tuned`. Adapters and those models share one LRU
of `max_tuned` entries; an evicted adapter is deleted from the peft model.

Generation runs on one scheduler thread, never on the event loop. One thread because the CPUs this
targets have 2 cores: two generate() calls side by side oversubscribe them (field notes §3). Requests
that arrive within `batch_window` seconds of each other for the same model, with compatible sampling
settings, run as one batched generate() call (~5x the total tokens/s of one stream, field notes §8).
A lock per model keeps peft's active adapter from switching mid-generation (eviction and DELETE take
it too). Weights stay fp32: a LoRA delta added to a bf16 base output is rounded away (field notes §4);
on CPUs with bf16 the fp32 matmuls still run through oneDNN's fast path (hone.hardware).
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hone.errors import UserError

BASE = None  # `tuned` of a ModelSource that is a base model


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
    ends, ("done", [Answer...]) when all have, ("error", exception). Choice `index` is prompt_number * n + j, as OpenAI numbers them.
    """

    def __init__(self, source, prompts: list[list[int]], n: int, max_tokens: list[int], stop: list[str],
                 sampling: Sampling, emit: Callable[[tuple], None]):
        self.source, self.prompts, self.n = source, prompts, n
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


@dataclass
class _Base:
    """A base model in memory; `model` becomes a PeftModel once an adapter is loaded onto it."""
    model: torch.nn.Module
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set = field(default_factory=set)


@dataclass
class _Tuned:
    """An LRU entry: an adapter on a shared base (`adapter` set) or a model of its own (`model` set)."""
    base: str
    adapter: str | None = None
    model: torch.nn.Module | None = None
    tokenizer: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def tuned_artifact(tuned: str | Path) -> Path:
    """The folder to load for a ModelSource's `tuned`: a run folder's adapter/ or model/, else itself."""
    from hone.methods.artifact import is_tuned_artifact

    path = Path(tuned)
    if (path / "run.json").is_file():
        for sub in ("adapter", "model"):
            if is_tuned_artifact(path / sub):
                return path / sub
    return path


def is_shared_adapter(folder: Path) -> bool:
    """LoRA and DoRA adapters load onto the shared base; anything else needs its own model."""
    import json

    from hone.methods.artifact import read_method

    info = read_method(folder)
    if info["saved"] != "peft" or info["method"] not in ("lora", "dora"):
        return False
    peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    return peft_type == "LORA"   # a bare peft folder reads as lora; prompt tuning & co. are not


class Engine:
    """Loads models on demand and answers Jobs on one scheduler thread."""

    def __init__(self, max_tuned: int = 4, batch_window: float = 0.005, max_batch: int = 8,
                 default_max_tokens: int = 512, threads: int | None = None):
        self.default_max_tokens = default_max_tokens   # an answer's length when the request sets none
        self.max_tuned, self.batch_window, self.max_batch = max(1, max_tuned), batch_window, max(1, max_batch)
        self._threads = threads
        self._device: str | None = None
        self._bases: dict[str, _Base] = {}
        self._tuned: OrderedDict[str, _Tuned] = OrderedDict()   # least recently used first
        self._tokenizers: dict[str, object] = {}
        self._contexts: dict[str, int | None] = {}
        self._encode_lock = threading.Lock()
        self._guard = threading.RLock()      # the dicts above; never held while generating
        self._names = itertools.count()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- what the router calls -------------------------------------------------------------------
    def tokenizer(self, source):
        """The tokenizer `source` was trained with (its tuned folder's own, else its base's)."""
        from hone.models.load import load_tokenizer

        spec = source.base
        if source.tuned is not BASE:
            folder = tuned_artifact(source.tuned)
            if (folder / "tokenizer_config.json").is_file():
                spec = str(folder)
        with self._guard:
            if spec not in self._tokenizers:
                self._tokenizers[spec] = load_tokenizer(spec)
            return self._tokenizers[spec]

    def encode(self, source, text: str) -> list[int]:
        """Token ids of `text` with `source`'s tokenizer. Serialised: a fast tokenizer encoding on two
        threads at once can fail with "Already borrowed" (its padding state is mutable)."""
        tokenizer = self.tokenizer(source)
        with self._encode_lock:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    def context_length(self, source) -> int | None:
        """How many tokens prompt + answer may hold (the model's position limit), None if unknown."""
        from transformers import AutoConfig

        from hone.models.catalogue import resolve_model

        folder = tuned_artifact(source.tuned) if source.tuned is not BASE else None
        spec = str(folder) if folder is not None and (folder / "config.json").is_file() else source.base
        with self._guard:
            if spec not in self._contexts:
                config = AutoConfig.from_pretrained(resolve_model(spec).path)
                self._contexts[spec] = getattr(config, "max_position_embeddings", None)
            return self._contexts[spec]

    def submit(self, job: Job) -> None:
        """Queue `job`; its events arrive through job.emit from the scheduler thread."""
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve_forever, name="hone-generate", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def unload(self, source) -> None:
        """Drop `source`'s tuned weights from memory (after DELETE /v1/models)."""
        if source.tuned is BASE:
            return
        key = str(tuned_artifact(source.tuned).resolve())
        with self._guard:
            entry = self._tuned.pop(key, None)
        if entry is not None:
            self._drop(entry)

    def loaded(self) -> list[str]:
        """Tuned artifacts in memory, least recently used first (for tests and `/v1/models` debugging)."""
        with self._guard:
            return list(self._tuned)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    # -- loading ---------------------------------------------------------------------------------
    def _hardware(self) -> str:
        if self._device is None:
            from hone.hardware import pick_hardware

            self._device = pick_hardware("auto", self._threads).device
        return self._device

    def _base(self, spec: str) -> _Base:
        from hone.models.load import load_causal_lm, load_tokenizer

        with self._guard:
            if spec not in self._bases:
                model = load_causal_lm(spec, self._hardware())
                self._bases[spec] = _Base(model, load_tokenizer(spec))
            return self._bases[spec]

    def _load(self, source) -> tuple[torch.nn.Module, object, threading.Lock, Callable]:
        """(model, tokenizer, lock, scope) for `source`; `scope()` switches the shared base to the
        source's adapter (or off, for the base itself) for one generate() call, under the lock."""
        if source.tuned is BASE:
            base = self._base(source.base)
            return base.model, base.tokenizer, base.lock, lambda: adapter_scope(base.model, None)
        folder = tuned_artifact(source.tuned)
        key = str(folder.resolve())
        with self._guard:
            entry = self._tuned.get(key)
            if entry is None:
                while len(self._tuned) >= self.max_tuned:
                    self._drop(self._tuned.popitem(last=False)[1])
                entry = self._tuned[key] = self._load_tuned(source.base, folder)
            self._tuned.move_to_end(key)
        if entry.adapter is not None:
            base = self._bases[entry.base]
            return base.model, base.tokenizer, base.lock, lambda: adapter_scope(base.model, entry.adapter)
        return entry.model, entry.tokenizer, entry.lock, nullcontext

    def _load_tuned(self, base_spec: str, folder: Path) -> _Tuned:
        if not folder.is_dir():
            raise UserError(f"the tuned model's files are gone ({folder})")
        if is_shared_adapter(folder):
            from peft import PeftModel

            from hone.methods.peft_methods import quiet_peft_warnings

            base = self._base(base_spec)
            name = f"adapter{next(self._names)}"   # peft names become module keys: no dots, no colons
            with base.lock, quiet_peft_warnings():
                if isinstance(base.model, PeftModel):
                    base.model.load_adapter(str(folder), adapter_name=name)
                else:
                    base.model = PeftModel.from_pretrained(base.model, str(folder), adapter_name=name).eval()
                base.adapters.add(name)
            return _Tuned(base_spec, adapter=name)
        from hone.methods.artifact import load_tuned
        from hone.models.load import load_tokenizer

        model = load_tuned(base_spec, folder, self._hardware())
        spec = str(folder) if (folder / "tokenizer_config.json").is_file() else base_spec
        return _Tuned(base_spec, model=model, tokenizer=load_tokenizer(spec))

    def _drop(self, entry: _Tuned) -> None:
        if entry.adapter is None:
            with entry.lock:
                entry.model = None
            return
        base = self._bases[entry.base]
        with base.lock:
            base.adapters.discard(entry.adapter)
            if base.adapters:
                base.model.delete_adapter(entry.adapter)
            else:   # the last adapter: unwrap, so the base runs without peft's per-layer indirection
                base.model = base.model.unload()

    # -- the scheduler thread --------------------------------------------------------------------
    def _serve_forever(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            deadline = time.monotonic() + self.batch_window
            while (left := deadline - time.monotonic()) > 0:
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                pending.append(job)
            for batch in self._batches(pending):
                self._run(batch)

    def _batches(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs that can share one generate() call: same model, same sampling, at most max_batch rows.

        A seeded job runs alone: sharing the random stream with others would change its tokens."""
        groups: dict[tuple, list[list[Job]]] = {}
        for job in jobs:
            s = job.sampling
            how = ("greedy",) if s.greedy else (s.temperature, s.top_p) if s.seed is None else ("seeded", id(job))
            batches = groups.setdefault((job.source.id, job.source.tuned, how), [[]])
            if batches[-1] and sum(j.rows for j in batches[-1]) + job.rows > self.max_batch:
                batches.append([])
            batches[-1].append(job)
        return [batch for batches in groups.values() for batch in batches]

    def _run(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if not job.cancelled]
        if not live:
            return
        try:
            model, tokenizer, lock, scope = self._load(live[0].source)
            with lock, scope():
                generate_rows(model, tokenizer, live, self._hardware())
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request, the thread goes on
            for job in live:
                job.fail(exc)


class _Row:
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

    def __init__(self, tokenizer, rows: list[_Row], eos: set[int]):
        self.tokenizer, self.rows, self.eos = tokenizer, rows, eos

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if not row.done:
                self.step(row, token)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)

    def step(self, row: _Row, token: int) -> None:
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

    def text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.ids, skip_special_tokens=True)

    def end(self, row: _Row, text: str, reason: str) -> None:
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
def generate_rows(model, tokenizer, jobs: list[Job], device: str) -> None:
    """One generate() call for every row of `jobs` (same model, same sampling), left-padded."""
    from transformers import GenerationConfig, StoppingCriteriaList

    rows = [_Row(job, p * job.n + j, prompt, job.max_tokens[p])
            for job in jobs for p, prompt in enumerate(job.prompts) for j in range(job.n)]
    width = max(len(row.prompt) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.prompt):] = torch.tensor(row.prompt)
        mask[i, width - len(row.prompt):] = 1
    eos = _eos_ids(model, tokenizer)
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
        model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                       stopping_criteria=StoppingCriteriaList([progress]))
    progress.finish_all()


def adapter_scope(model, adapter: str | None):
    """The shared base with `adapter` active, or with every adapter off when `adapter` is None."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return nullcontext()
    if adapter is None:
        return model.disable_adapter()
    model.set_adapter(adapter)
    return nullcontext()


def _eos_ids(model, tokenizer) -> set[int]:
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(configured) if isinstance(configured, (list, tuple)) else ({configured} if configured is not None else set())
    return eos
