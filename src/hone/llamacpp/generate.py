"""Greedy answers through llama.cpp for evaluation: every prompt decoded by one BatchDecoder, in this process.

Measured on the demo's test set (docs/decisions.md, "Evaluation through llama.cpp"): the f16 GGUF gives the
transformers fp32 model's greedy answers on nearly every item (it computes in f32 from f16 weights); a
quantized GGUF may differ more. Rows end at an end-of-turn token or at `max_new_tokens`, as generate() does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

SLOTS = 32   # sequences decoding together (32 demo prompts: 43.1 tok/s at 32 slots, 23.1 at 16; 1 thread, load ~10)


def generate_ids(gguf: Path, prompts: list[list[int]], max_new_tokens: int, eos: set[int], threads: int,
                 on_done: Callable[[int], None] | None = None, slots: int = SLOTS) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, end-of-turn token left out), in input order."""
    from hone.llamacpp.batch import BatchDecoder, Sequence

    # Each sequence its own KV cells (not one unified cache, where every row attends over every row's cells,
    # masked): 1.4x the tokens/s on 32 demo prompts (43.1 against 29.0-34.3 tok/s, 1 thread, load ~10).
    longest = max((len(p) for p in prompts), default=0) + max_new_tokens
    per_row = -(-longest // 256) * 256   # llama.cpp rounds a context to 256 cells; keep n_ctx / slots whole
    decoder = BatchDecoder(str(gguf), threads, slots, n_ctx=slots * per_row, n_batch=512, unified=False)
    answers: list[list[int]] = [[] for _ in prompts]
    try:
        for i, prompt in enumerate(prompts):
            decoder.add(Sequence(i, prompt, max_new_tokens, frozenset(eos)))
        while decoder:
            tokens, ended = decoder.step()
            for i, token in tokens:
                if token not in eos:
                    answers[i].append(token)   # keys are the prompts' indices
            if ended and on_done:
                on_done(len(ended))
    finally:
        decoder.close()
    return answers
