"""Many tuned LoRA adapters over one base under load, against the same load on one merged model.

    .venv/bin/python benchmarks/many_adapters.py [--adapters 20] [--clients 16] [--requests 64] [--tokens 32]
                                                 [--engines transformers] [--threads 2] [--rounds 1]
                                                 [--before OTHER_CHECKOUT/src] [--folder DIR]

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

With the llamacpp engine (LoRA runs served per request: the base's GGUF + each run's gguf-lora adapter),
a probe in a fresh process after the serving rows (`--probe`): resident memory of one BatchDecoder on the
base GGUF, then with the N adapters loaded (each used for one decode), against a decoder on the merged
model's GGUF (what each of N merged GGUFs would hold, the file sizes beside it); and the cost of switching
adapters: one-row decode steps alternating between two adapters against the same steps on one adapter.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(base: str, merged: str, adapters: list[str], threads: int) -> dict:
    """Resident memory of the base + N adapters against one merged model, and the cost of an adapter switch,
    in this (fresh) process; the llama.cpp child of `hone serve` holds the same objects."""
    from hone.llamacpp.batch import BatchDecoder, Sequence

    prompt = list(range(1000, 1032))
    out: dict = {"rss_start_mb": rss_mb()}

    def one_step(decoder: BatchDecoder, adapter: str | None, tokens: int = 2) -> None:
        decoder.add(Sequence(0, prompt, tokens, frozenset(), adapter=adapter))
        while decoder:
            decoder.step()

    decoder = BatchDecoder(base, threads, slots=16, n_ctx=8192)
    one_step(decoder, None)
    out["base_mb"] = rss_mb() - out["rss_start_mb"]
    for adapter in adapters:
        one_step(decoder, adapter)
    out["adapters_mb"] = rss_mb() - out["rss_start_mb"] - out["base_mb"]
    out["adapter_file_mb"] = sum(Path(a).stat().st_size for a in adapters) / 2**20
    # Switching: 2 rows of different adapters decode one adapter per step (a switch every step), against 2 rows
    # of one adapter decoding together; tokens/s of each, alternated 3 times.
    rates: dict[str, list[float]] = {"switching": [], "one_adapter": []}
    for _ in range(3):
        for name, pair in (("switching", adapters[:2]), ("one_adapter", [adapters[0]] * 2)):
            for key, adapter in enumerate(pair):
                decoder.add(Sequence(key, prompt, 48, frozenset(), adapter=adapter))
            started, made = time.perf_counter(), 0
            while decoder:
                made += len(decoder.step()[0])
            rates[name].append(made / (time.perf_counter() - started))
    out.update({f"{k}_tok_s": round(statistics.median(v), 1) for k, v in rates.items()})
    decoder.close()
    before = rss_mb()
    merged_decoder = BatchDecoder(merged, threads, slots=16, n_ctx=8192)
    one_step(merged_decoder, None)
    out["merged_mb"] = rss_mb() - before
    out["merged_file_mb"] = Path(merged).stat().st_size / 2**20
    merged_decoder.close()
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def llamacpp_probe(home: Path, runs: list[Path], threads: int, want: int) -> dict | None:
    """The probe (see the docstring) in a fresh process, on the GGUFs the llamacpp engine served from. With
    fewer exported adapters than `want`, copies of their files (other paths: loaded as other adapters, the same
    bytes) make up the number for the memory figure."""
    adapters = sorted(str(p) for run in runs for p in (run / "exports").glob("gguf-lora-*/adapter-*.gguf"))
    ggufs = {p.name.split("-")[0]: p for p in (home / "gguf").glob("*.gguf")}
    if len(adapters) < 2 or "merged" not in ggufs or len(ggufs) < 2:
        print(f"probe skipped: {len(adapters)} adapter GGUFs, base GGUFs {sorted(ggufs)}")
        return None
    if len(adapters) < want:
        copies = home / "probe-adapters"
        copies.mkdir(exist_ok=True)
        for i in range(len(adapters), want):
            target = copies / f"copy-{i:02d}.gguf"
            shutil.copyfile(adapters[i % len(adapters)], target)
            adapters.append(str(target))
        print(f"probe: {len(runs)} exported adapters and {want - len(runs)} copies of their files", flush=True)
    base = next(p for name, p in ggufs.items() if name != "merged")
    done = subprocess.run([sys.executable, __file__, "--probe", json.dumps([str(base), str(ggufs["merged"]), adapters,
                                                                            threads])],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--folder", help="build in (and keep) this folder; a later run with the same folder reuses "
                                         "its runs, their exports and converted GGUFs (no rebuild, no re-export)")
    parser.add_argument("--probe-adapters", type=int, default=20, help="adapters the llama.cpp memory probe loads")
    parser.add_argument("--probe", help=argparse.SUPPRESS)   # JSON [base, merged, adapters, threads]: the probe
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(*json.loads(args.probe))))
        return

    from hone.models.catalogue import DEFAULT_MODEL

    reuse = args.folder is not None and (Path(args.folder) / "merged").is_dir()
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="hone-many-adapters-"))
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        started = time.perf_counter()
        if reuse:   # runs, their exports and the engines' homes (converted GGUFs) from an earlier --folder run
            runs = sorted(p for p in folder.glob("run-*") if p.is_dir())[:args.adapters]
            merged = folder / "merged"
            if len(runs) < args.adapters:
                raise SystemExit(f"{folder} holds {len(runs)} runs, fewer than --adapters {args.adapters}")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            first = train_lora_run(folder, args.steps, args.threads)
            runs = [first] + [copy_with_noise(first, folder / f"run-{i:02d}", seed=i)
                              for i in range(1, args.adapters)]
            merged = merge(first, folder / "merged")
        print(f"{'found' if reuse else 'built'} {len(runs)} LoRA runs and the merged model in "
              f"{time.perf_counter() - started:.0f} s (load average {load_average():.2f})", flush=True)
        chats = conversations(32)
        versions = {"after": None, "before": args.before} if args.before else {"": None}
        for engine in args.engines.split(","):
            servers = {}
            try:
                for version, src in versions.items():
                    (folder / f"serve-{engine}{version}" / "serve.db").unlink(missing_ok=True)   # offered afresh
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
            if engine in ("llamacpp", "auto"):
                version = next(iter(versions))
                probed = llamacpp_probe(folder / f"serve-{engine}{version}", runs, args.threads, args.probe_adapters)
                if probed:
                    print(f"{engine} probe (load {load_average():.2f}): {json.dumps(probed)}", flush=True)
    finally:
        if args.keep or args.folder:
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
