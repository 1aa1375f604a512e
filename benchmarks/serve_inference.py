"""hone serve's inference engine on the real model: batching, unmerged adapters, adapter loads.

    .venv/bin/python benchmarks/serve_inference.py [--prompts 8] [--tokens 48] [--threads 1]

Rows (SmolLM2-135M-Instruct, greedy, the first N demo `orders` test chats without their answers):
  peer_hf_batch    hone.evaluation.generate.generate_batch: one HF generate() over all prompts (the peer)
  engine_batched   every request submitted at once: the engine batches them into one generate()
  engine_serial    one request at a time (what a server without batching does)
  adapter_serial   the same through a LoRA r16 all-linear adapter kept unmerged on the shared base
  merged_serial    the same adapter merged into a plain model (what a one-model-per-adapter server runs)
  mixed_batched    all at once, every other request through the adapter: one generate() for both
Speeds are generated tokens / wall seconds; read them as ratios inside one run (field notes).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass(frozen=True)
class Source:
    id: str
    base: str
    tuned: str | None
    owned_by: str = "system"
    created: int = 0


def conversations(n: int) -> list[list[dict]]:
    path = Path(__file__).resolve().parents[1] / "src/hone/datasets/orders/test.jsonl"
    rows = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()[:n]]
    return [[m for m in row if m["role"] != "assistant"] for row in rows]


def run_jobs(engine, source, chats, tokens: int, together: bool) -> tuple[list[str], int, float]:
    """(answers, generated tokens, seconds) for `chats` submitted all at once or one by one;
    `source` may be a list, one per chat."""
    from hone.data.render import prompt_for_generation
    from hone.serve.generation import Job, Sampling

    sources = source if isinstance(source, list) else [source] * len(chats)
    prompts = [engine.encode(s, prompt_for_generation(engine.tokenizer(s), c)) for s, c in zip(sources, chats)]
    results: dict[int, object] = {}
    done = [threading.Event() for _ in prompts]

    def emit_for(i):
        def emit(event):
            if event[0] in ("done", "error"):
                results[i] = event[1]
                done[i].set()
        return emit

    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.submit(Job(sources[i], [prompt], 1, [tokens], [], Sampling(0.0), emit_for(i)))
        if not together:
            done[i].wait()
    for event in done:
        event.wait()
    seconds = time.perf_counter() - start
    for i in results:
        if isinstance(results[i], Exception):
            raise results[i]
    answers = [results[i][0] for i in range(len(prompts))]
    return [a.text for a in answers], sum(a.tokens for a in answers), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from hone.models.catalogue import DEFAULT_MODEL, resolve_model
    from hone.evaluation.generate import generate_batch
    from hone.models.load import load_causal_lm, load_tokenizer
    from hone.serve.engine import Engine

    base = str(resolve_model(DEFAULT_MODEL).path)
    chats = conversations(args.prompts)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        lora = get_peft_model(load_causal_lm(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                               init_lora_weights=False))
        lora.save_pretrained(Path(tmp) / "adapter")
        del lora
        plain, adapter = Source("base", base, None), Source("ft:lora", base, str(Path(tmp) / "adapter"))
        engine = Engine(max_tuned=2, batch_window=0.005, max_batch=args.prompts, threads=args.threads)
        run_jobs(engine, plain, chats[:1], 4, False)   # load the base and warm up before timing

        model, tokenizer = load_causal_lm(base), load_tokenizer(base)
        start = time.perf_counter()
        peer = generate_batch(model, tokenizer, chats, args.tokens, batch_size=args.prompts)
        peer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in peer)
        rows["peer_hf_batch"] = (peer_tokens, time.perf_counter() - start)
        del model

        batched, n, s = run_jobs(engine, plain, chats, args.tokens, True)
        rows["engine_batched"] = (n, s)
        serial, n, s = run_jobs(engine, plain, chats, args.tokens, False)
        rows["engine_serial"] = (n, s)

        start = time.perf_counter()
        run_jobs(engine, adapter, chats[:1], 1, False)
        adapter_load = time.perf_counter() - start
        adapted, n, s = run_jobs(engine, adapter, chats, args.tokens, False)
        rows["adapter_serial"] = (n, s)
        calls = engine.calls
        mixed_sources = [adapter if i % 2 else plain for i in range(len(chats))]
        mixed, n, s = run_jobs(engine, mixed_sources, chats, args.tokens, True)
        rows["mixed_batched"] = (n, s)
        mixed_calls = engine.calls - calls
        engine.close()

        from hone.methods.artifact import load_tuned

        merged_engine = Engine(max_tuned=1, batch_window=0.0, threads=args.threads)
        full = Path(tmp) / "merged"
        load_tuned(base, Path(tmp) / "adapter").save_pretrained(full)
        merged_source = Source("merged", base, str(full))
        run_jobs(merged_engine, merged_source, chats[:1], 1, False)
        merged, n, s = run_jobs(merged_engine, merged_source, chats, args.tokens, False)
        rows["merged_serial"] = (n, s)
        merged_engine.close()

    print(f"{'row':16} {'tokens':>7} {'seconds':>8} {'tok/s':>7}")
    for name, (n, s) in rows.items():
        print(f"{name:16} {n:7d} {s:8.1f} {n / s:7.1f}")
    speed = {name: n / s for name, (n, s) in rows.items()}
    print(f"engine_batched / engine_serial: {speed['engine_batched'] / speed['engine_serial']:.2f}x; "
          f"engine_batched / peer_hf_batch: {speed['engine_batched'] / speed['peer_hf_batch']:.2f}x; "
          f"adapter_serial / merged_serial: {speed['adapter_serial'] / speed['merged_serial']:.2f}x; "
          f"first request with the adapter (load + 1 token): {adapter_load:.1f} s")
    print(f"batched answers equal serial answers: {sum(a == b for a, b in zip(batched, serial))}/{len(serial)}; "
          f"serial equal the peer's (stripped): {sum(a.strip() == b for a, b in zip(serial, peer))}/{len(serial)}; "
          f"adapter equal merged: {sum(a == b for a, b in zip(adapted, merged))}/{len(merged)}; mixed batch "
          f"equal to its rows alone: {sum(m == (a if i % 2 else b) for i, (m, a, b) in enumerate(zip(mixed, adapted, serial)))}"
          f"/{len(mixed)} in {mixed_calls} generate() call(s)")


if __name__ == "__main__":
    main()
