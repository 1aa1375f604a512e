"""Greedy answers of llama.cpp (each GGUF quant) against the transformers engine's fp32, on the same prompts.

    .venv/bin/python benchmarks/engine_agreement.py [--prompts 16] [--tokens 48] [--quants f16,q8_0]

SmolLM2-135M-Instruct, the first N demo `orders` test chats without their answers (as
serve_inference.py), both engines in this process through hone's Job interface. Prints, per quant, how
many answers are identical to the transformers engine's, and the first differing answers.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import Source, conversations, run_jobs  # noqa: E402 - the engine benchmark's prompts and driver


def answers(engine, source, chats, tokens: int) -> list[str]:
    """The engine's greedy answers to `chats`, all submitted at once; the engine is closed after."""
    try:
        return run_jobs(engine, source, chats, tokens, together=True)[0]
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from hone.models.catalogue import DEFAULT_MODEL
    from hone.serve.engine import Engine
    from hone.serve.engines.llamacpp import LlamaCppEngine

    source = Source(DEFAULT_MODEL, DEFAULT_MODEL, None)
    chats = conversations(args.prompts)
    reference = answers(Engine(threads=args.threads, max_batch=args.prompts), source, chats, args.tokens)
    for quant in args.quants.split(","):
        got = answers(LlamaCppEngine(threads=args.threads, quant=quant), source, chats, args.tokens)
        same = sum(a == b for a, b in zip(got, reference))
        print(f"{quant}: {same}/{len(chats)} greedy answers identical to the transformers engine (fp32)")
        for a, b in [(a, b) for a, b in zip(got, reference) if a != b][:3]:
            print(f"   transformers: {b[:70]!r}\n   {quant:12}: {a[:70]!r}")


if __name__ == "__main__":
    main()
