"""Many sequences decoding together in one llama.cpp context: continuous batching on the GGUF.

llama-cpp-python's `Llama` runs one sequence, so a server that answers through it gives its single-stream
speed at any load. llama.cpp itself decodes many sequences per `llama_decode` call (each token tagged with
its sequence id, one unified KV cache): this module drives that through llama-cpp-python's low-level API.
Rows join between two steps (their prompts are prefilled together, up to `n_batch` tokens per call) and
leave when they end (end of turn, their own limit, or a cancel), freeing their KV cells; a row is admitted
only while the cells its prompt and its limit need are free, so the cache never overflows mid-answer.

Sampling is per row on the logits llama.cpp returns: greedy rows take the argmax, sampled rows draw at
their temperature from the smallest set of tokens holding top_p of the mass, from their own seeded
generator. Imports llama_cpp and numpy only (the serving child process loads nothing else).

LoRA adapters per row: a row may name an adapter GGUF (`Sequence.adapter`), loaded once over the decoder's
model (`llama_adapter_lora_init`, a few MB each). llama.cpp applies adapters to a whole context, to every
sequence of a `llama_decode` (`llama_set_adapters_lora`), so rows are decoded in groups of one adapter
(None: the base alone), as llama-server does (it batches only requests with the same adapters): fresh
rows are prefilled group by group, and each step decodes one group, the one whose last turn is oldest,
so no adapter starves. A prompt's KV cells belong to the adapter it was prefilled under: a cached prefix
is reused only by a row of the same adapter (the adapter changes the keys and values of every layer).
"""
from __future__ import annotations

import ctypes
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class Sequence:
    """One row to answer: its prompt ids, its limit and sampling, and (once admitted) its KV slot."""
    key: Any
    prompt: list[int]
    limit: int
    eos: frozenset[int]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None   # a LoRA adapter GGUF applied to this row (None: the model alone)
    slot: int = -1
    reused: int = 0      # prompt tokens whose KV cells came from an ended row with the same prefix
    made: int = 0
    last: int = -1
    rng: Any = field(default=None, repr=False)

    @property
    def cells(self) -> int:
        return len(self.prompt) + self.limit


class BatchDecoder:
    """A GGUF model and one context in which up to `slots` sequences decode together."""

    def __init__(self, model_path: str, threads: int, slots: int = 16, n_ctx: int = 8192, n_batch: int = 512,
                 unified: bool = True):
        """`unified`: one KV cache of `n_ctx` cells that any row may fill (a server: rows of any length), else
        `n_ctx / slots` cells per row (an evaluation: faster, since a row attends over its own cells only)."""
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)   # llama.cpp's own log: errors only (a server's log is for requests)
        self.llama_cpp, self.model_path = llama_cpp, model_path
        self.model = _internals.LlamaModel(path_model=model_path, params=llama_cpp.llama_model_default_params(),
                                           verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max, params.kv_unified = slots, unified
        params.n_threads = params.n_threads_batch = threads
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.n_ctx, self.n_batch, self.n_vocab = self.context.n_ctx(), n_batch, self.model.n_vocab()
        self.row_cells = self.n_ctx if unified else self.n_ctx // slots
        self.batch = _internals.LlamaBatch(n_tokens=max(n_batch, slots), embd=0, n_seq_max=1, verbose=False)
        self.free_slots = list(range(slots))[::-1]
        # Slots whose cells still hold an ended row's prompt (oldest first), with the adapter it was prefilled
        # under: a new row of that adapter that starts with the same tokens (a chat template's system prefix,
        # the same question again) reuses them.
        self.cached: OrderedDict[int, tuple[str | None, list[int]]] = OrderedDict()
        self.adapters: dict[str, Any] = {}          # adapter GGUF path -> llama_adapter_lora pointer
        self.applied: str | None = None             # the adapter set on the context now
        self.turns: dict[str | None, int] = {}      # adapter -> the step its rows last decoded
        self.steps = 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.used = 0   # KV cells reserved by the running rows and held by the cached prompts

    def add(self, sequence: Sequence) -> None:
        """Queue a row; it is admitted at a later step. A row that can never fit (or whose adapter does not
        load) is refused here."""
        if sequence.cells > self.row_cells:
            raise ValueError(f"prompt ({len(sequence.prompt)} tokens) + max_tokens ({sequence.limit}) exceed the "
                             f"context ({self.row_cells} tokens)")
        if sequence.adapter is not None:
            self.load_adapter(sequence.adapter)
        if sequence.temperature > 0:
            sequence.rng = np.random.default_rng(sequence.seed)
        self.waiting.append(sequence)

    def cancel(self, match) -> list[Sequence]:
        """End every row whose key `match(key)` accepts (waiting or running); returns them."""
        gone = [s for s in self.waiting if match(s.key)]
        for s in gone:
            self.waiting.remove(s)
        running = [s for s in self.running if match(s.key)]
        for s in running:
            self._release(s)
        return gone + running

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)

    def load_adapter(self, path: str) -> None:
        """A LoRA adapter GGUF loaded over the model, once; later rows naming it share it."""
        if path not in self.adapters:
            adapter = self.llama_cpp.llama_adapter_lora_init(self.model.model, path.encode())
            if not adapter:
                raise ValueError(f"llama.cpp could not load the LoRA adapter {path} over {self.model_path}")
            self.adapters[path] = adapter

    def step(self) -> tuple[list[tuple[Any, int]], list[Any]]:
        """Admit what fits (their prompts prefilled, a first token each), then one token for every running
        row of one adapter, the one whose turn is oldest: ([(key, token)], [keys of rows that ended])."""
        tokens: list[tuple[Any, int]] = []
        ended: list[Any] = []
        self.steps += 1
        fresh = self._admit()
        for adapter, group in groups(fresh).items():
            self._apply(adapter)
            for s, token in zip(group, self._prefill(group)):
                self._advance(s, token, tokens, ended)
        by_adapter = groups([s for s in self.running if s not in fresh])
        if by_adapter:
            adapter = min(by_adapter, key=lambda a: self.turns.get(a, -1))
            decoding = by_adapter[adapter]
            self.turns[adapter] = self.steps
            self._apply(adapter)
            self.batch.reset()
            for s in decoding:
                self._put(s.last, len(s.prompt) + s.made - 1, s.slot, True)
            self.context.decode(self.batch)
            for s, token in zip(decoding, self._sample(decoding)):
                self._advance(s, token, tokens, ended)
        return tokens, ended

    def _apply(self, adapter: str | None) -> None:
        """Set `adapter` (None: none) on the context for the next decodes; llama.cpp applies it to every row."""
        if adapter == self.applied:
            return
        if adapter is None:
            code = self.llama_cpp.llama_set_adapters_lora(self.context.ctx, None, 0, None)
        else:
            pointers = (self.llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            code = self.llama_cpp.llama_set_adapters_lora(self.context.ctx, pointers, 1, (ctypes.c_float * 1)(1.0))
        if code != 0:
            raise RuntimeError(f"llama.cpp could not apply the LoRA adapter {adapter} (code {code})")
        self.applied = adapter

    # -- inside a step --------------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        fresh = []
        while self.waiting:
            s = self.waiting[0]
            slot, shared = self._reusable(s.prompt, s.adapter)
            if slot is None:
                while self.cached and (not self.free_slots or self.used + s.cells > self.n_ctx):
                    self._evict(next(iter(self.cached)))
                if not self.free_slots or self.used + s.cells > self.n_ctx:
                    break
                slot = self.free_slots.pop()
            else:
                self.used -= len(self.cached.pop(slot)[1])
                self.llama_cpp.llama_memory_seq_rm(self.context.memory, slot, shared, -1)
                while self.cached and self.used + s.cells > self.n_ctx:
                    self._evict(next(iter(self.cached)))
                if self.used + s.cells > self.n_ctx:   # back as it was; wait for running rows to end
                    self.cached[slot] = (s.adapter, s.prompt[:shared])
                    self.used += shared
                    break
            self.waiting.popleft()
            s.slot, s.reused = slot, shared
            self.used += s.cells
            fresh.append(s)
            self.running.append(s)
        return fresh

    def _reusable(self, prompt: list[int], adapter: str | None) -> tuple[int | None, int]:
        """The cached slot of `adapter` sharing the longest prefix with `prompt`, and how many tokens (at least
        one token of the prompt is left to prefill: its logits give the first answer token)."""
        best, length = None, 0
        for slot, (owner, tokens) in self.cached.items():
            if owner != adapter:
                continue   # cells computed under another adapter (or none) hold other keys and values
            n = 0
            for a, b in zip(tokens, prompt[:-1]):
                if a != b:
                    break
                n += 1
            if n > length:
                best, length = slot, n
        return best, length

    def _evict(self, slot: int) -> None:
        self.used -= len(self.cached.pop(slot)[1])
        self.llama_cpp.llama_memory_seq_rm(self.context.memory, slot, -1, -1)
        self.free_slots.append(slot)

    def _prefill(self, fresh: list[Sequence]) -> list[int]:
        """Every fresh row's prompt through the model, `n_batch` tokens per call; each row's first token."""
        firsts: list[int] = []
        pending: list[Sequence] = []   # rows whose last prompt token is in the current batch
        self.batch.reset()
        for s in fresh:
            for pos in range(s.reused, len(s.prompt)):
                token = s.prompt[pos]
                if self.batch.n_tokens() == self.n_batch:
                    self.context.decode(self.batch)
                    firsts += self._sample(pending)
                    pending = []
                    self.batch.reset()
                last = pos == len(s.prompt) - 1
                self._put(token, pos, s.slot, last)
                if last:
                    pending.append(s)
        if self.batch.n_tokens():
            self.context.decode(self.batch)
            firsts += self._sample(pending)
        return firsts

    def _put(self, token: int, pos: int, slot: int, logits: bool) -> None:
        b, i = self.batch.batch, self.batch.batch.n_tokens
        b.token[i], b.pos[i], b.seq_id[i][0], b.n_seq_id[i], b.logits[i] = token, pos, slot, 1, logits
        b.n_tokens = i + 1

    def _sample(self, rows: list[Sequence]) -> list[int]:
        """The next token of each of `rows`, whose logits are the outputs of the last decode, in order."""
        if not rows:
            return []
        pointer = self.llama_cpp.llama_get_logits(self.context.ctx)
        logits = np.ctypeslib.as_array(pointer, shape=(len(rows), self.n_vocab))
        out = logits.argmax(-1).tolist()
        for i, s in enumerate(rows):
            if s.temperature > 0:
                out[i] = nucleus(logits[i], s.temperature, s.top_p, s.rng)
        return out

    def _advance(self, s: Sequence, token: int, tokens: list, ended: list) -> None:
        s.last, s.made = token, s.made + 1
        tokens.append((s.key, token))
        if token in s.eos or s.made >= s.limit:
            self._release(s)
            ended.append(s.key)

    def _release(self, s: Sequence) -> None:
        """The row leaves; its slot keeps the prompt's cells for a later row with the same prefix."""
        self.running.remove(s)
        self.llama_cpp.llama_memory_seq_rm(self.context.memory, s.slot, len(s.prompt), -1)
        self.cached[s.slot] = (s.adapter, s.prompt)
        self.used += len(s.prompt) - s.cells

    def close(self) -> None:
        self.batch.close()
        self.context.close()
        for adapter in self.adapters.values():
            self.llama_cpp.llama_adapter_lora_free(adapter)
        self.adapters.clear()
        self.model.close()


def groups(rows: list[Sequence]) -> dict[str | None, list[Sequence]]:
    """`rows` by adapter, in order of first appearance; each group keeps the rows' order."""
    out: dict[str | None, list[Sequence]] = {}
    for s in rows:
        out.setdefault(s.adapter, []).append(s)
    return out


def nucleus(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token drawn at `temperature` from the smallest set of tokens holding `top_p` of the mass."""
    z = logits.astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        sorted_probs = probs[order]
        keep = sorted_probs.cumsum() - sorted_probs <= top_p   # the top token always stays
        probs = np.zeros_like(probs)
        probs[order[keep]] = sorted_probs[keep]
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
