"""The transformers engine's prefix reuse: a row whose prompt starts like a recently prefilled one prefills
only the rest, and answers exactly as a full prefill would (serve/engines/batching.py PrefixStore)."""
from __future__ import annotations

import pytest
import torch

from hone.serve.engines.batching import PrefixStore, RunningBatch
from hone.serve.generation import Job, Sampling

SHARED = list(range(100, 124))   # a 24-token "system turn" every prompt starts with


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from hone.models.load import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_model), "cpu"), load_tokenizer(str(tiny_model))


def job(prompt: list[int], tokens: int = 12) -> Job:
    return Job(None, [prompt], 1, [tokens], [], Sampling(temperature=0.0), lambda event: None)


def answers(model_and_tokenizer, schedule, store: bool) -> tuple[list[list[int]], int, list[torch.Tensor]]:
    """Run `schedule` (lists of prompts admitted together, with two decode steps between admissions) and
    return every row's generated token ids, the prompt tokens the store saved and the logits of every forward
    (greedy tokens of a random 2-layer model barely depend on the context; its logits do)."""
    model, tokenizer = model_and_tokenizer
    batch = RunningBatch(lambda: model, tokenizer, "cpu")
    if not store:
        batch.prefixes.max_tokens = 0
    logits, forward = [], batch.forward
    batch.forward = lambda *args: logits.append(forward(*args)) or logits[-1]
    jobs, ids = [], {}
    steps = batch.step

    def record():   # the ids each row generated so far (rows leave the batch when they finish)
        for row in batch.rows:
            ids[id(row.job)] = list(row.ids)

    for prompts in schedule:
        new = [job(p) for p in prompts]
        jobs += new
        batch.admit(new, [None] * len(new))
        record()
        for _ in range(2):
            if len(batch):
                steps()
                record()
    while len(batch):
        steps()
        record()
    return [ids.get(id(j), []) for j in jobs], batch.prefixes.reused, logits


def test_reused_prefixes_answer_as_a_full_prefill(model_and_tokenizer):
    # one prompt alone; then three joining a running row together: a long shared prefix, no shared prefix,
    # and the first prompt again; then one more sharing only the system turn
    first = SHARED + [5, 6, 7, 8, 9]
    schedule = [[first], [SHARED + [5, 6, 7, 40, 41, 42], [900 + i for i in range(20)], first],
                [SHARED + [70, 71]]]
    plain, saved_plain, plain_logits = answers(model_and_tokenizer, schedule, store=False)
    reused, saved, reused_logits = answers(model_and_tokenizer, schedule, store=True)
    assert saved_plain == 0 and saved >= 3 * len(SHARED)
    assert reused == plain
    assert len(reused_logits) == len(plain_logits)
    for got, want in zip(reused_logits, plain_logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert all(len(ids) > 0 for ids in plain)


def test_the_store_keeps_adapters_apart_and_leaves_the_last_token_to_prefill():
    store = PrefixStore(max_tokens=64)
    layers = [(torch.randn(2, 10, 4), torch.randn(2, 10, 4))]
    prompt = list(range(10))
    store.add("a", prompt, layers)
    assert store.longest("b", prompt) == (0, None)      # KV under another adapter is another computation
    assert store.longest(None, prompt) == (0, None)
    k, found = store.longest("a", prompt)
    assert k == 9 and found is not None and torch.equal(found[0][0], layers[0][0][:, :9])
    assert store.longest("a", list(range(3)) + [99] * 7)[0] == 0   # shorter than MIN_PREFIX
    for i in range(8):   # least recently used dropped first, within max_tokens
        store.add("a", [1000 + i] * 10, layers)
    assert store.tokens <= 64 and (("a", tuple(prompt)) not in store.entries)
