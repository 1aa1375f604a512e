"""Greedy answers through llama.cpp for evaluation: every prompt decoded by one BatchDecoder, in this process.

Measured on the demo's test set (docs/decisions.md, "Evaluation through llama.cpp"): the f16 GGUF gives the
transformers fp32 model's greedy answers on nearly every item (it computes in f32 from f16 weights); a
quantized GGUF may differ more. Rows end at an end-of-turn token or at `max_new_tokens`, as generate() does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

SLOTS = 32   # sequences decoding together: an evaluation's batch (measured faster than 16 on the demo)


def generate_ids(gguf: Path, prompts: list[list[int]], max_new_tokens: int, eos: set[int], threads: int,
                 on_done: Callable[[int], None] | None = None, slots: int = SLOTS) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, end-of-turn token left out), in input order."""
    from hone.llamacpp.batch import BatchDecoder, Sequence

    longest = max((len(p) for p in prompts), default=0) + max_new_tokens
    decoder = BatchDecoder(str(gguf), threads, slots, n_ctx=max(8192, longest), n_batch=512)
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
