"""Time to first token of the transformers engine with and without prefix reuse (batching.PrefixStore).

    .venv/bin/python benchmarks/prefix_reuse.py [--chats 32] [--threads 1]

The demo `orders` test chats (one system turn, different user turns) through the chat template, each
admitted alone into a RunningBatch of the embedded SmolLM2-135M-Instruct: the prefill forward and the first
token, timed. Two batches, one with the store and one without, take each chat in turn (the order flipped
every chat), so both see the same load. The first chat fills the store and is left out. Prints the prompt
tokens, the tokens reused, the median time to first token of each, and one JSON line:
`ttft_reuse_vs_full` (median with reuse over without; below 1 is faster) and `prompt_tokens_reused`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import conversations  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from hone.data.render import prompt_for_generation
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import load_causal_lm, load_tokenizer
    from hone.serve.engines.batching import RunningBatch
    from hone.serve.generation import Job, Sampling

    torch.set_num_threads(args.threads)
    tokenizer, model = load_tokenizer(DEFAULT_MODEL), load_causal_lm(DEFAULT_MODEL, "cpu")
    prompts = [tokenizer.encode(prompt_for_generation(tokenizer, chat), add_special_tokens=False)
               for chat in conversations(args.chats)]
    batches = {"reuse": RunningBatch(lambda: model, tokenizer, "cpu"),
               "full": RunningBatch(lambda: model, tokenizer, "cpu")}
    batches["full"].prefixes.max_tokens = 0
    times: dict[str, list[float]] = {name: [] for name in batches}
    for i, prompt in enumerate(prompts):
        for name in (list(batches) if i % 2 else list(reversed(batches))):
            batch = batches[name]
            job = Job(None, [prompt], 1, [1], [], Sampling(temperature=0.0), lambda event: None)
            began = time.perf_counter()
            batch.admit([job], [None])   # the prefill and the first token; max_tokens 1 ends the row
            if i:
                times[name].append(time.perf_counter() - began)
    reused = batches["reuse"].prefixes.reused
    total = sum(len(p) for p in prompts[1:])
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{len(prompts) - 1} chats, {total} prompt tokens, {reused} reused ({reused / total:.0%}); "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, value in medians.items():
        print(f"  {name}: time to first token p50 {value * 1000:.1f} ms")
    print(json.dumps({"ttft_reuse_vs_full": round(medians["reuse"] / medians["full"], 3),
                      "prompt_tokens_reused": round(reused / total, 3)}))


if __name__ == "__main__":
    main()
