"""Continuous batching for the transformers engine: rows join the running batch between decode steps.

A RunningBatch holds the rows being generated for one model (a base and every LoRA adapter on it count
as one: each row goes through its own adapter, by engines/multilora.py's stacked LoRA step when the batch
mixes plain LoRA adapters, else by peft's `adapter_names`) with one KV cache. Between two decode steps the
scheduler may admit new requests: their prompts are prefilled together (left-padded, one forward pass,
logits of the last position only), and their cache is left-padded to the running cache's length and
concatenated on the batch axis. A row that finished (end of turn, stop string, its own max_tokens, a
client that went away) leaves after the step that finished it, and cache columns no row attends to any
more are cut from the left, so a long answer does not keep a finished row's prompt in every step.

A new row whose prompt starts like a recently prefilled one under the same adapter (the chat template's
system turn, a few-shot preamble, the same question again) reuses that prompt's KV columns for the common
prefix and prefills only the rest (PrefixStore: the last prompts' KV, least recently used dropped first,
at most MAX_PREFIX_TOKENS tokens). The reused columns sit left of a gap of padding before the row's own
suffix; the attention mask and explicit positions make that the same computation as a full prefill.

Positions are given explicitly per row (a row's count of real tokens), so padding never shifts RoPE.
Sampling is per row: greedy rows take the argmax, sampled rows draw from their job's own generator
(seeded when the request has a seed), so requests with different temperatures, top_p or seeds share
one batch. Stop strings, streaming and usage counts are generation.RowProgress's, as in the window path.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hone.serve.engines.multilora import stacked_rows
from hone.serve.generation import Job, Row, RowProgress, adapter_scope, eos_ids

MAX_PREFIX_TOKENS = 4096   # prompt tokens whose KV the store keeps (SmolLM2-135M: 46 KB a token in fp32)
MIN_PREFIX = 4             # a shorter common prefix is prefilled again (not worth the copy)


class PrefixStore:
    """The KV of recently prefilled prompts, per adapter, to prefill only what a new prompt adds.

    Any prefix of a stored prompt's KV is valid for another prompt with the same tokens (attention is causal),
    so a new row takes the stored prompt sharing the longest prefix with it, always leaving at least its last
    token to prefill (the logits that pick its first answer token)."""

    def __init__(self, max_tokens: int = MAX_PREFIX_TOKENS):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.tokens = 0
        self.reused = 0   # prompt tokens not prefilled again, since the engine started (the tests read it)

    def longest(self, adapter: str | None, prompt: list[int]) -> tuple[int, list | None]:
        best, found = 0, None
        for key in self.entries:
            if key[0] != adapter:
                continue
            stored, n = key[1], min(len(key[1]), len(prompt) - 1)
            k = next((i for i in range(n) if stored[i] != prompt[i]), n)
            if k > best:
                best, found = k, key
        if found is None or best < MIN_PREFIX:
            return 0, None
        self.entries.move_to_end(found)
        self.reused += best
        return best, [(k[:, :best], v[:, :best]) for k, v in self.entries[found]]

    def add(self, adapter: str | None, prompt: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        key = (adapter, tuple(prompt))
        if len(prompt) < MIN_PREFIX or len(prompt) > self.max_tokens or key in self.entries:
            return
        self.entries[key] = layers
        self.tokens += len(prompt)
        while self.tokens > self.max_tokens:
            (_, old), _ = self.entries.popitem(last=False)
            self.tokens -= len(old)

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0


class RunningBatch:
    """The rows decoding together on `model`, their KV cache, attention mask and next positions."""

    def __init__(self, model_of: Callable[[], Any], tokenizer, device: str, lock=None):
        # the model is looked up at every step: loading the first adapter wraps the base in a PeftModel
        self.model_of, self.tokenizer, self.device = model_of, tokenizer, device
        self.lock = lock if lock is not None else nullcontext()   # the engine's per-model lock
        self.progress = RowProgress(tokenizer, [], eos_ids(model_of(), tokenizer))
        self.prefixes = PrefixStore()   # kept across resets; the engine clears it when an adapter goes
        self.reset()

    def reset(self) -> None:
        self.rows: list[Row] = []
        self.adapters: list[str | None] = []          # per row: the peft adapter, None for the base
        self.generators: list[torch.Generator | None] = []
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)        # each row's newest token, fed at the next step
        self.positions = torch.zeros(0, dtype=torch.long)   # each row's next position id

    def __len__(self) -> int:
        return len(self.rows)

    def jobs(self) -> list[Job]:
        return list({id(row.job): row.job for row in self.rows}.values())

    # -- joining ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, jobs: list[Job], adapters: list[str | None]) -> None:
        """Prefill every row of `jobs` (one adapter per job) in one forward pass and add them to the batch."""
        from transformers import DynamicCache

        rows, names, generators = [], [], []
        for job, adapter in zip(jobs, adapters):
            generator = None
            if not job.sampling.greedy and job.sampling.seed is not None:
                generator = torch.Generator().manual_seed(job.sampling.seed)
            for p, prompt in enumerate(job.prompts):
                for j in range(job.n):
                    rows.append(Row(job, p * job.n + j, prompt, job.max_tokens[p]))
                    names.append(adapter)
                    generators.append(generator)
        found = [self.prefixes.longest(name, row.prompt) for row, name in zip(rows, names)]
        reused = max(k for k, _ in found)   # columns of stored KV, each row's right-aligned in them
        width = max(len(row.prompt) - k for row, (k, _) in zip(rows, found))
        ids = torch.full((len(rows), width), self.progress_pad(), dtype=torch.long)
        mask = torch.zeros((len(rows), reused + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, (k, _)) in enumerate(zip(rows, found)):
            suffix = row.prompt[k:]
            ids[i, width - len(suffix):] = torch.tensor(suffix)
            positions[i, width - len(suffix):] = torch.arange(k, len(row.prompt))
            mask[i, reused - k:reused] = 1
            mask[i, reused + width - len(suffix):] = 1
        cache = DynamicCache()
        if reused:
            like = next(layers for _, layers in found if layers is not None)
            for index, (key, value) in enumerate(like):
                keys = [_left_pad(layers[index][0] if layers else key[:, :0], reused) for _, layers in found]
                values = [_left_pad(layers[index][1] if layers else value[:, :0], reused) for _, layers in found]
                cache.update(torch.stack(keys), torch.stack(values), index)
        logits = self.forward(ids, mask, positions, cache, names)
        kv = _key_values(cache)
        for i, (row, name) in enumerate(zip(rows, names)):   # each prompt's KV, its real columns only
            columns = mask[i].nonzero().squeeze(-1).to(self.device)
            if kv is not None:
                self.prefixes.add(name, row.prompt,
                                  [(keys[i][:, columns], values[i][:, columns]) for keys, values in kv])
        first = self.sample(logits, rows, generators)
        for row, token in zip(rows, first.tolist()):
            self.progress.step(row, token)
        self.merge(rows, names, generators, cache, mask, first, mask.sum(-1))
        self.keep([i for i, row in enumerate(self.rows) if not row.done])

    def progress_pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def merge(self, rows, names, generators, cache, mask, last, positions) -> None:
        if self.cache is None or not self.rows:
            self.cache, self.mask, self.last, self.positions = cache, mask, last, positions
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
                old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
            self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                                   F.pad(mask, (width - mask.shape[1], 0))])
            self.last = torch.cat([self.last, last])
            self.positions = torch.cat([self.positions, positions])
        self.rows += rows
        self.adapters += names
        self.generators += generators

    # -- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """One new token for every row; finished rows leave."""
        mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        logits = self.forward(self.last[:, None], mask, self.positions[:, None], self.cache, self.adapters)
        self.mask, self.positions = mask, self.positions + 1
        tokens = self.sample(logits, self.rows, self.generators)
        self.last = tokens
        for row, token in zip(self.rows, tokens.tolist()):
            if not row.done:
                self.progress.step(row, token)
        self.keep([i for i, row in enumerate(self.rows) if not row.done])

    def forward(self, ids, mask, positions, cache, names: list[str | None]) -> torch.Tensor:
        """Logits of each row's last position, every row through its own adapter."""
        from peft import PeftModel

        args = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        model = self.model_of()
        if isinstance(model, PeftModel) and len(set(names)) > 1 and (stacked := stacked_rows(model, names)):
            with stacked:   # a mixed batch of plain LoRA adapters: all rows' LoRA terms at once (multilora.py)
                out = model(**args)
        elif isinstance(model, PeftModel) and len(set(names)) > 1:   # peft's mixed batch: "__base__" is none
            out = model(**args, adapter_names=[name or "__base__" for name in names])
        else:
            with adapter_scope(model, names[0]):
                out = model(**args)
        return out.logits[:, -1].float().cpu()

    def sample(self, logits: torch.Tensor, rows: list[Row], generators) -> torch.Tensor:
        tokens = logits.argmax(-1)
        for i, (row, generator) in enumerate(zip(rows, generators)):
            sampling = row.job.sampling
            if not sampling.greedy:
                tokens[i] = nucleus(logits[i], sampling.temperature, sampling.top_p, generator)
        return tokens

    # -- leaving ----------------------------------------------------------------------------------
    def keep(self, indices: list[int]) -> None:
        """Only the rows at `indices` stay; cache columns no remaining row attends to are cut."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.reset()
            return
        index = torch.tensor(indices)
        self.rows = [self.rows[i] for i in indices]
        self.adapters = [self.adapters[i] for i in indices]
        self.generators = [self.generators[i] for i in indices]
        self.mask, self.last, self.positions = self.mask[index], self.last[index], self.positions[index]
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())   # leading all-padding columns
        self.mask = self.mask[:, unused:]
        device_index = index.to(self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys[device_index, :, unused:]
            layer.values = layer.values[device_index, :, unused:]

    def drop(self, failed: set[int], exc: Exception) -> None:
        """Fail the jobs whose id is in `failed` (their model was deleted) and take their rows out."""
        for job in self.jobs():
            if id(job) in failed:
                job.fail(exc)
        self.keep([i for i, row in enumerate(self.rows) if id(row.job) not in failed])

    def fail(self, exc: Exception) -> None:
        for job in self.jobs():
            job.fail(exc)
        self.keep([])


def nucleus(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token drawn at `temperature` from the smallest set of tokens holding `top_p` of the mass."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p   # the top token always stays
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _key_values(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's keys and values, or None when a layer keeps another state (linear attention, a sliding
    window): a prefix of such a cache is not a prefix's cache, so nothing is stored for reuse."""
    from transformers.cache_utils import DynamicLayer

    layers = cache.layers
    if not all(type(layer) is DynamicLayer and isinstance(layer.keys, torch.Tensor) for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before the sequence axis (-2) up to `width` columns."""
    return F.pad(tensor, (0, 0, width - tensor.shape[-2], 0))
