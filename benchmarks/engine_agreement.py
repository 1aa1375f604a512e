"""Greedy answers of llama.cpp (each GGUF quant) against the transformers engine's fp32, on the same prompts.

    .venv/bin/python benchmarks/engine_agreement.py [--prompts 16] [--tokens 48] [--quants f16,q8_0]
                                                    [--run LORA_RUN --merged MERGED_FOLDER]

SmolLM2-135M-Instruct, the first N demo `orders` test chats without their answers (as
serve_inference.py), both engines in this process through hone's Job interface. Prints, per quant, how
many answers are identical to the transformers engine's, and the first differing answers.

With --run (a LoRA run over the embedded model) and --merged (that run's adapter merged in fp32 into a model
folder, e.g. many_adapters.py --folder's `merged/`): the run's answers from the transformers engine (fp32, the
adapter unmerged by peft) against llama.cpp's per-request adapter (the base GGUF + the run's gguf-lora
export) and against llama.cpp on the merged model's GGUF, per quant.
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
    parser.add_argument("--run", help="a LoRA run over the embedded model: its answers per request vs merged")
    parser.add_argument("--merged", help="with --run: the run's adapter merged into a model folder")
    args = parser.parse_args()
    if args.run:
        return adapter_agreement(args)

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


def adapter_agreement(args) -> None:
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.serve.engine import Engine
    from hone.serve.engines.llamacpp import LlamaCppEngine

    if not args.merged:
        raise SystemExit("--run needs --merged (the run's adapter merged into a model folder)")
    chats = conversations(args.prompts)
    run = Source("run", DEFAULT_MODEL, str(Path(args.run).resolve()))
    merged = Source("merged", str(Path(args.merged).resolve()), None)
    got = {"transformers fp32": answers(Engine(threads=args.threads, max_batch=args.prompts), run, chats,
                                        args.tokens)}
    for quant in args.quants.split(","):
        engine = LlamaCppEngine(threads=args.threads, quant=quant)
        assert engine.gguf(run).adapter is not None, "the run is not served as an adapter"
        got[f"{quant} adapter"] = answers(engine, run, chats, args.tokens)
        got[f"{quant} merged"] = answers(LlamaCppEngine(threads=args.threads, quant=quant), merged, chats,
                                         args.tokens)
    names = list(got)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = sum(x == y for x, y in zip(got[a], got[b]))
            print(f"{a} vs {b}: {same}/{len(chats)} greedy answers identical")
            for x, y in [(x, y) for x, y in zip(got[a], got[b]) if x != y][:2]:
                print(f"   {a:18}: {x[:70]!r}\n   {b:18}: {y[:70]!r}")


if __name__ == "__main__":
    main()
