"""Models in memory and text generation for `hone serve`'s inference endpoints.

One base model per base spec, with every LoRA/DoRA adapter trained on it loaded next to it through
peft (`load_adapter` / `set_adapter` by name), so a hundred tuned models cost one base in memory plus
a few MB each. Other tuned artifacts (full fine-tunes, qlora, prompt tuning, freeze, ...) load as
their own models through `hone.methods.artifact.load_tuned`. Adapters and those models share one LRU
of `max_tuned` entries; an evicted adapter is deleted from the peft model.

Generation runs on one scheduler thread, never on the event loop. One thread because the CPUs this
targets have 2 cores: two generate() calls side by side oversubscribe them (field notes §3). Two ways
to batch, `Engine(continuous=...)`:
- continuous (the default): requests join the running batch between decode steps and finished rows
  leave (engines/batching.py); a base and its adapters share one batch, each row through its own adapter
  (plain LoRA adapters by engines/multilora.py's stacked step, 2.3-3.2x peft's loop per decode step). Only
  prompt-learning models (prompt/prefix tuning: virtual tokens inside forward) still take the window path below.
- window: requests that arrive within `batch_window` seconds of each other for the same model, with
  compatible sampling settings, run as one batched generate() call (3.9x the tokens/s of one at a time,
  docs/serve_inference.md); a request arriving meanwhile waits for the whole call. Kept as the baseline
  benchmarks/serve_throughput.py compares against.
In both, an idle engine waits `batch_window` for a first request's companions. A lock per model keeps
peft's active adapter from switching mid-step (eviction and DELETE take it too). Weights load in the
dtype engines/weights.py's table picks per case and device (`weights`): fp32 under `auto` on a CPU, where
the fp32 matmuls still run through oneDNN's bf16 fast path (hone.hardware).
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from hone.errors import UserError
from hone.serve.engines import multilora
from hone.serve.engines.batching import RunningBatch
from hone.serve.engines.weights import DTYPES, WEIGHTS, check_weights, pick_weights, weights_case
from hone.serve.generation import Job, adapter_scope, generate_rows
from hone.serve.served import BASE, ModelTokenizers, is_shared_adapter

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger("hone.serve")


@dataclass
class _Base:
    """A base model in memory; `model` becomes a PeftModel once an adapter is loaded onto it."""
    model: torch.nn.Module
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set = field(default_factory=set)


@dataclass
class _Unload:
    """A DELETE for the scheduler thread to carry out between two steps."""
    key: str
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Tuned:
    """An LRU entry: an adapter on a shared base (`adapter` set) or a model of its own (`model` set)."""
    base: str
    adapter: str | None = None
    model: torch.nn.Module | None = None
    tokenizer: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine(ModelTokenizers):
    """The transformers engine: loads models on demand and answers Jobs on one scheduler thread."""

    def __init__(self, max_tuned: int = 4, batch_window: float = 0.005, max_batch: int = 8,
                 default_max_tokens: int = 512, threads: int | None = None, continuous: bool = True,
                 weights: str = "auto"):
        super().__init__()
        self.weights = check_weights(weights)   # fp32/bf16/fp16 per case and device: engines/weights.py
        self.default_max_tokens = default_max_tokens   # an answer's length when the request sets none
        self.max_tuned, self.batch_window, self.max_batch = max(1, max_tuned), batch_window, max(1, max_batch)
        self.continuous = continuous
        self._threads = threads
        self._device: str | None = None
        self._bases: dict[str, _Base] = {}
        self._tuned: OrderedDict[str, _Tuned] = OrderedDict()   # least recently used first
        self._running: dict[tuple, RunningBatch] = {}   # continuous mode: one batch per model (group)
        self._in_use: set[str] = set()          # tuned keys with rows in a running batch: never evicted
        self._lru_lock = threading.RLock()     # bases and the LRU: held while loading, not while generating
        self.calls = 0                          # batches started (generate() calls, prefills), for tests
        self._names = itertools.count()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- what the router calls -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue `job`; its events arrive through job.emit from the scheduler thread."""
        with self._lru_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve_forever, name="hone-generate", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def unload(self, source) -> None:
        """Drop `source`'s tuned weights from memory (after DELETE /v1/models). In continuous mode the
        scheduler thread does it between two steps, failing the rows still generating with them."""
        if source.tuned is BASE:
            return
        if self.continuous and self._thread is not None and self._thread.is_alive():
            request = _Unload(self._key(source))
            self._queue.put(request)
            request.done.wait(60)
            return
        with self._lru_lock:
            entry = self._tuned.pop(self._key(source), None)
        if entry is not None:
            self._drop(entry)

    def loaded(self) -> list[str]:
        """Tuned artifacts in memory, least recently used first (for tests and `/v1/models` debugging)."""
        with self._lru_lock:
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

        with self._lru_lock:
            if spec not in self._bases:
                model = load_causal_lm(spec, self._hardware(), DTYPES[self._weights(spec, None)])
                self._bases[spec] = _Base(model, load_tokenizer(spec))
            return self._bases[spec]

    def _weights(self, name: str, folder: Path | None) -> str:
        """The dtype the model `name` (a base when `folder` is None) loads in, said in the log."""
        case = weights_case(folder, folder is not None and is_shared_adapter(folder))
        dtype = pick_weights(self.weights, case, self._hardware())
        log.info("loading %s with %s weights (--weights %s; %s: %s)", name, dtype, self.weights, case,
                 WEIGHTS[case].what)
        return dtype

    def _kind(self, source) -> str:
        """'base', 'adapter' (a LoRA/DoRA on the shared base) or 'alone' (a model of its own)."""
        if source.tuned is BASE:
            return "base"
        key = self._key(source)
        with self._cache_lock:
            if key not in self._kinds:
                if not Path(key).is_dir():
                    raise UserError(f"the tuned model's files are gone ({key})")
                self._kinds[key] = "adapter" if is_shared_adapter(Path(key)) else "alone"
            return self._kinds[key]

    def _entry(self, source) -> _Tuned:
        """`source`'s tuned weights, loaded if needed (evicting the least recently used), marked used."""
        key = self._key(source)
        with self._lru_lock:
            entry = self._tuned.get(key)
            if entry is None:
                idle = [k for k in self._tuned if k not in self._in_use]   # least recently used first
                for old in idle[:max(0, len(self._tuned) - self.max_tuned + 1)]:
                    self._drop(self._tuned.pop(old))
                entry = self._tuned[key] = self._load_tuned(self._base_spec(source), Path(key))
            self._tuned.move_to_end(key)
            return entry

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
                multilora.sync(base.model)   # mixed batches of plain LoRA adapters take the stacked path
            return _Tuned(base_spec, adapter=name)
        from hone.methods.artifact import load_tuned
        from hone.models.load import load_tokenizer

        dtype = self._weights(str(folder), folder)   # before loading: a refused dtype loads nothing
        model = load_tuned(base_spec, folder, self._hardware())
        if dtype != "fp32":
            model = model.to(DTYPES[dtype])
        spec = str(folder) if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file() \
            else base_spec
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
                cast("PeftModel", base.model).delete_adapter(entry.adapter)
                multilora.sync(base.model)
            else:   # the last adapter: unwrap, so the base runs without peft's per-layer indirection
                base.model = cast("PeftModel", base.model).unload()

    # -- the scheduler thread --------------------------------------------------------------------
    def _serve_forever(self) -> None:
        if self.continuous:
            return self._serve_continuous()
        while (items := self._gather(block=True)) is not None:
            pending = [item for item in items if isinstance(item, Job)]
            for batch in self._batches(pending):
                self._run(batch)

    def _gather(self, block: bool) -> list | None:
        """What waits in the queue (Jobs; unloads are done here). When `block`, wait for a first item, then
        `batch_window` for companions. None: the engine is closing."""
        items: list = []
        deadline = None
        while True:
            try:
                if block and not items:
                    item = self._queue.get()
                    deadline = time.monotonic() + self.batch_window
                elif deadline is not None and (left := deadline - time.monotonic()) > 0:
                    item = self._queue.get(timeout=left)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is None:
                return None
            if isinstance(item, _Unload):
                self._unload_now(item)
                block = block and not items
                continue
            items.append(item)

    def _serve_continuous(self) -> None:
        waiting: list[Job] = []
        while True:
            items = self._gather(block=not waiting and not any(self._running.values()))
            if items is None:
                closing = UserError("the server is shutting down")
                for batch in self._running.values():
                    batch.fail(closing)
                for job in waiting:
                    job.fail(closing)
                return
            waiting = self._admit(waiting + items)
            for batch in list(self._running.values()):
                if len(batch):
                    try:
                        with batch.lock:
                            batch.step()
                    except Exception as exc:  # noqa: BLE001 - reported to its requests, the thread goes on
                        log.error("a decode step failed", exc_info=exc)
                        batch.fail(exc)

    def _admit(self, waiting: list[Job]) -> list[Job]:
        """Start what fits into the running batches (max_batch rows, max_tuned adapters each); the rest waits."""
        joining: dict[tuple, list[Job]] = {}
        left = []
        self._in_use = {self._key(j.source) for b in self._running.values() for j in b.jobs()
                        if j.source.tuned is not BASE}
        for job in waiting:
            if job.cancelled:
                continue
            try:
                group = self._group(job)
            except Exception as exc:  # noqa: BLE001 - this request fails; the others go on
                job.fail(exc)
                continue
            if group[0] == "window" or job.schema:   # prompt learning, or a schema's logits processor
                self._run([job])                          # (generation.constraint_hook): a generate() of its own
                continue
            batch, new = self._running.get(group), joining.setdefault(group, [])
            jobs = (batch.jobs() if batch else []) + new
            rows = sum(j.rows for j in jobs)
            adapters = {self._key(j.source) for j in jobs + [job] if j.source.tuned is not BASE}
            if jobs and (rows + job.rows > self.max_batch or len(adapters) > self.max_tuned):
                left.append(job)
                continue
            new.append(job)
            if job.source.tuned is not BASE:
                self._in_use.add(self._key(job.source))
        for group, jobs in joining.items():
            if jobs:
                self._start(group, jobs)
        return left

    def _group(self, job: Job) -> tuple:
        """Which running batch `job` joins: its base's ("shared"), its own model's ("alone"), or "window"."""
        kind = self._kind(job.source)
        if kind != "alone":
            return ("shared", self._base_spec(job.source))
        model = self._entry(job.source).model
        config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
        return ("window" if getattr(config, "is_prompt_learning", False) else "alone", self._key(job.source))

    def _start(self, group: tuple, jobs: list[Job]) -> None:
        try:
            batch = self._running.get(group)
            if group[0] == "alone":
                entry = self._entry(jobs[0].source)
                batch = batch or RunningBatch(lambda: entry.model, entry.tokenizer, self._hardware(), entry.lock)
                names: list[str | None] = [None] * len(jobs)
            else:
                base = self._base(group[1])
                names = [self._entry(j.source).adapter if j.source.tuned is not BASE else None for j in jobs]
                batch = batch or RunningBatch(lambda: base.model, base.tokenizer, self._hardware(), base.lock)
            self.calls += 1
            with batch.lock:
                batch.admit(jobs, names)
            self._running[group] = batch
        except Exception as exc:  # noqa: BLE001 - reported to each joining request, the thread goes on
            for job in jobs:
                job.fail(exc)

    def _unload_now(self, request: _Unload) -> None:
        """On the scheduler thread: fail the rows generating with the model, then drop its weights."""
        gone = UserError("the model was deleted while it was answering")
        for batch in self._running.values():
            mine = {id(j) for j in batch.jobs() if j.source.tuned is not BASE and self._key(j.source) == request.key}
            batch.drop(mine, gone)
            batch.prefixes.clear()   # KV computed under the deleted model must not seed a later one of its name
        with self._lru_lock:
            entry = self._tuned.pop(request.key, None)
        if entry is not None:
            self._drop(entry)
        request.done.set()

    def _batches(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs that can share one generate() call, at most max_batch rows each.

        Same sampling, and the same model: a base and every adapter on it count as one (peft routes
        each row through its own adapter), up to max_tuned adapters so none evicts another mid-batch.
        A seeded job runs alone: sharing the random stream with others would change its tokens."""
        groups: dict[tuple, list[list[Job]]] = {}
        for job in jobs:
            try:
                kind = self._kind(job.source)
            except Exception as exc:  # noqa: BLE001 - this request fails; the others go on
                job.fail(exc)
                continue
            s = job.sampling
            how = ("greedy",) if s.greedy else (s.temperature, s.top_p) if s.seed is None else ("seeded", id(job))
            model = ("alone", self._key(job.source)) if kind == "alone" else ("shared", self._base_spec(job.source))
            batches = groups.setdefault((model, how), [[]])
            batch = batches[-1]
            adapters = {self._key(j.source) for j in batch + [job] if j.source.tuned is not BASE}
            if batch and (sum(j.rows for j in batch) + job.rows > self.max_batch or len(adapters) > self.max_tuned):
                batches.append([])
            batches[-1].append(job)
        return [batch for batches in groups.values() for batch in batches]

    def _run(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if not job.cancelled]
        if not live:
            return
        started = time.perf_counter()
        try:
            device = self._hardware()
            self.calls += 1
            if self._kind(live[0].source) == "alone":
                entry = self._entry(live[0].source)
                with entry.lock:
                    generate_rows(entry.model, entry.tokenizer, live, device)
                return
            base = self._base(self._base_spec(live[0].source))
            names = [self._entry(job.source).adapter if job.source.tuned is not BASE else None for job in live]
            with base.lock:
                if len(set(names)) == 1:
                    with adapter_scope(base.model, names[0]):
                        generate_rows(base.model, base.tokenizer, live, device)
                else:   # a mixed batch: each row through its own adapter ("__base__": none; multilora.py)
                    rows = [name or "__base__" for name, job in zip(names, live) for _ in range(job.rows)]
                    generate_rows(base.model, base.tokenizer, live, device, adapter_names=rows)
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request, the thread goes on
            for job in live:
                job.fail(exc)
            return
        tokens = sum(a.tokens for job in live for a in job.answers)
        log.info("generated %d tokens in %.2f s for %d request(s), %d row(s): %s", tokens,
                 time.perf_counter() - started, len(live), sum(j.rows for j in live),
                 ", ".join(sorted({job.source.id for job in live})))
