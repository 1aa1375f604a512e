"""Many tuned LoRA adapters over one base under load, against the same load on one merged model.

    .venv/bin/python benchmarks/many_adapters.py [--adapters 20] [--clients 16] [--requests 64] [--tokens 32]
                                                 [--engines transformers] [--threads 2] [--rounds 1]
                                                 [--before OTHER_CHECKOUT/src]

What it builds (in a temporary folder, removed at the end unless --keep):
  one real LoRA run    `hone.train` on the embedded model (SmolLM2-135M-Instruct), LoRA r16, --steps optimizer
                       steps on 32 demo `orders` chats (no base evaluation, no forgetting probe, a 2-item test)
  N-1 more runs        copies of that run folder whose adapter weights are the trained ones plus seeded
                       gaussian noise (std of each tensor): every adapter differs, none is zero, each is a
                       whole run folder (run.json, method, adapter/) as `hone train` leaves it
  one merged model     run 0's adapter merged in fp32 into a plain model folder (hone.methods.artifact.load_tuned),
                       offered as a base model (`--base-model merged=FOLDER`)
The N runs are offered to the key's org as finished fine-tuning jobs in the server's database (the rows a
worker writes when a job succeeds), so they are asked for by their `ft:...` names as a client would.

Per engine, one `hone serve --engine ENGINE --max-loaded-models N --max-batch 16` on loopback, driven by
serve_load's client (the official openai client streaming, closed loop, `clients` at a time), greedy,
the demo `orders` test chats, `requests` requests per target:
  adaptersN   request i asks for adapter i mod N (every adapter in every batch)
  adapter1    every request asks for adapter 0 (LoRA's own cost, one adapter)
  merged      every request asks for the merged model (no adapter at all)
Targets alternate within each round. With --before, a second server runs hone from another checkout's src/
(PYTHONPATH) on the same runs, and each target runs on "before" and "after" back to back (the order flipped
every round), so a code change is compared on the same load. Printed: completion tokens/s over the wall
time, time to first token p50, latency p50/p99, peak RSS of the server's process tree, and the load average
(`uptime`) before each row. The last line is one JSON object: adaptersN_vs_merged (tokens/s ratio), p50/p99
ratios, per engine (and adaptersN_after_vs_before with --before).
Speeds move with the machine's load: read ratios within one run (field notes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import conversations  # noqa: E402 - the same prompts as the other serve benchmarks
from serve_load import HoneServer, RssSampler, hone_level, load_average, offer_runs, summary, train_lora_run  # noqa: E402, E501


def copy_with_noise(run: Path, target: Path, seed: int) -> Path:
    """`run`'s folder with its adapter weights moved by seeded gaussian noise of each tensor's own std."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "exports", "merged"))
    weights = target / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    generator = torch.Generator().manual_seed(seed)
    moved = {name: t + torch.randn(t.shape, generator=generator, dtype=t.dtype) * t.float().std().clamp_min(1e-4)
             for name, t in tensors.items()}
    save_file(moved, str(weights))
    return target


def merge(run: Path, target: Path) -> Path:
    """Run `run`'s adapter merged in fp32 into a plain model folder (weights + tokenizer)."""
    from hone.methods.artifact import load_tuned
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import load_tokenizer

    load_tuned(DEFAULT_MODEL, run / "adapter").save_pretrained(str(target))
    load_tokenizer(DEFAULT_MODEL).save_pretrained(str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64, help="requests per target and round")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--engines", default="transformers", help="comma-separated: transformers, llamacpp, auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of the one trained run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, merged model, logs)")
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout's src/ folder (e.g. `git archive main src`): its server runs beside "
                             "this checkout's on the same runs, the two alternating within every round")
    args = parser.parse_args()

    from hone.models.catalogue import DEFAULT_MODEL

    folder = Path(tempfile.mkdtemp(prefix="hone-many-adapters-"))
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        started = time.perf_counter()
        first = train_lora_run(folder, args.steps, args.threads)
        runs = [first] + [copy_with_noise(first, folder / f"run-{i:02d}", seed=i) for i in range(1, args.adapters)]
        merged = merge(first, folder / "merged")
        print(f"built {len(runs)} LoRA runs and the merged model in {time.perf_counter() - started:.0f} s "
              f"(load average {load_average():.2f})", flush=True)
        chats = conversations(32)
        versions = {"after": None, "before": args.before} if args.before else {"": None}
        for engine in args.engines.split(","):
            servers = {}
            try:
                for version, src in versions.items():
                    servers[version] = HoneServer(engine, folder / f"serve-{engine}{version}", "--inference-threads",
                                                  str(args.threads), "--max-batch", "16", "--base-model",
                                                  DEFAULT_MODEL, "--base-model", f"merged={merged}",
                                                  "--max-loaded-models", str(args.adapters), src=src)
                names = {v: offer_runs(server.db, runs) for v, server in servers.items()}
                for version, server in servers.items():
                    warm = time.perf_counter()   # every model loads (or exports, for llamacpp) once, untimed
                    asyncio.run(hone_level(server, names[version] + ["merged"], chats, 4, len(runs) + 1, 2))
                    print(f"{engine}{version and ' ' + version}: warm-up (load every model once) "
                          f"{time.perf_counter() - warm:.0f} s", flush=True)
                for r in range(args.rounds):
                    for target in (f"adapters{len(runs)}", "adapter1", "merged"):
                        order = list(servers) if r % 2 == 0 else list(reversed(servers))
                        for version in order:   # before and after back to back, on the same load
                            server, all_names = servers[version], names[version]
                            models = {"adapter1": all_names[:1], "merged": ["merged"]}.get(target, all_names)
                            load = load_average()
                            sampler, began = RssSampler(server.process.pid), time.perf_counter()
                            results = asyncio.run(hone_level(server, models, chats, args.clients, args.requests,
                                                             args.tokens))
                            row = summary(results, time.perf_counter() - began, sampler.stop())
                            rows.setdefault((engine + (version and " " + version), target), []).append(
                                {**row, "load": load})
                            print(f"  {engine}{version and ' ' + version} {target}: {row['tok_s']:.1f} tok/s, "
                                  f"ttft p50 {row['ttft_p50']:.2f} s, p50 {row['p50']:.2f} s, p99 {row['p99']:.2f} s, "
                                  f"{row['tokens']} tokens, peak RSS {row['rss_mb']:.0f} MB (load {load:.2f})",
                                  flush=True)
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        if args.keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"{args.clients} clients, {args.requests} requests per target, {args.tokens} new tokens at most, "
          f"{args.threads} thread(s), {args.rounds} round(s), medians")
    print(f"{'engine':20} {'target':11} {'tokens':>6} {'tok/s':>7} {'ttft p50':>8} {'p50 s':>7} {'p99 s':>7} "
          f"{'peak RSS MB':>11} {'load avg':>8}")
    table = {}
    for (engine, target), runs_ in rows.items():
        med = {k: statistics.median(r[k] for r in runs_) for k in runs_[0]}
        table[(engine, target)] = med
        print(f"{engine:20} {target:11} {med['tokens']:6.0f} {med['tok_s']:7.1f} {med['ttft_p50']:8.2f} "
              f"{med['p50']:7.2f} {med['p99']:7.2f} {med['rss_mb']:11.0f} {med['load']:8.2f}")
    many = f"adapters{args.adapters}"
    out = {}
    for engine in dict.fromkeys(e for e, _ in rows):
        a, m, one = table[(engine, many)], table[(engine, "merged")], table[(engine, "adapter1")]
        out[engine] = {f"{many}_vs_merged": round(a["tok_s"] / m["tok_s"], 3),
                       f"{many}_vs_adapter1": round(a["tok_s"] / one["tok_s"], 3),
                       "adapter1_vs_merged": round(one["tok_s"] / m["tok_s"], 3),
                       "p50_vs_merged": round(a["p50"] / m["p50"], 3), "p99_vs_merged": round(a["p99"] / m["p99"], 3)}
        if engine.endswith(" after") and (before := table.get((engine[:-6] + " before", many))):
            out[engine][f"{many}_after_vs_before"] = round(a["tok_s"] / before["tok_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
