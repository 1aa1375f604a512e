"""hone serve's engines under load, against the bare engines: tokens/s, time to first token, latency.

    .venv/bin/python benchmarks/serve_throughput.py [--clients 1,4,16,64] [--tokens 24] [--requests-per-client 1]
                                                   [--threads 1] [--quant f16] [--adapter RUN | --steps 2]
                                                   [--tuned-clients 1,16]

One run, greedy, the demo `orders` test chats (the prompts benchmarks/serve_inference.py uses), two models:
`base`, the embedded SmolLM2-135M-Instruct, and `tuned`, a real LoRA run on it (`--adapter RUN`, else one
trained here for `--steps` steps: serve_load.train_lora_run). The targets:
  hone:<engine>             `hone serve --engine ENGINE` (a real server on loopback, the official openai client
                            streaming, usage included) for every installed engine; `tuned` is the run as a
                            finished fine-tuning job of the key's org (`ft:...`), as a client would ask for it
  hone:transformers-window  `hone serve --engine transformers --window-batching` (batching before issue 18)
  bare:llamacpp             llama-cpp-python in this process, one request at a time behind a lock (a Llama runs
                            one sequence), on the GGUF hone serves: the base's, and for `tuned` the run's merged
                            GGUF export (`hone export --format gguf`, what hone's llama.cpp engine serves)
  bare:llamacpp-batched     hone's BatchDecoder (hone/llamacpp/batch.py: many sequences per llama_decode) in this
                            process on those GGUFs, no HTTP and no child: the bare engine under hone:llamacpp
  bare:vllm                 where vLLM is installed (make vllm, or HONE_VLLM_PYTHON): the vLLM server hone:vllm's
                            `hone serve --engine vllm` started, driven directly with the same token ids hone sends
                            (streamed completions); `tuned` is the run's adapter given to that server with
                            `--lora-modules tuned=ADAPTER` (hone loads its own copy through /v1/load_lora_adapter)
  bare:transformers         hone's transformers engine (continuous batching) in this process, no HTTP
  bare:hf-generate          HF generate() in this process, one request at a time (1 client, base model only)
Each level runs `clients` closed-loop clients (serve_load.closed_loop, the one client loop of every serve
benchmark), max(4, clients x requests-per-client) requests per model; `tuned` at the --tuned-clients levels
only (the ratios' levels: a run stays near 10 minutes). A level is a series of turns; each turn starts its
target (a server, or the bare engine's models in this process), warms it up (one 2-token request per model,
untimed), measures base then tuned, and stops it, so at most one server (and one vLLM) is up at a time; the
vLLM turn measures hone:vllm and bare:vllm alternately on the one vLLM server, which goes first alternating
from one level and model to the next (likewise bare:llamacpp and bare:llamacpp-batched). Per target, model and level:
completion tokens/s over the wall time, time to first token and latency p50/p99, peak RSS (the server's process
tree; bare:vllm the vLLM server's; this process for the other bare rows), and the load average before the row.
The last line is one JSON object: single_stream_vs_llamacpp (hone's default engine, 1 client, tok/s over bare
llama.cpp's), clients16_vs_window_batching (default engine at 16 clients over hone:transformers-window),
overhead_p50_vs_bare_engine (default engine's p50 latency at 16 clients over its bare engine's: the batched
decoder for llama.cpp), the same at 64 clients, the vLLM ratios where vLLM ran, and `tuned_` + each for the
tuned model. Speeds move with the machine's load: read ratios within one run (field notes).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncContextManager, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import conversations  # noqa: E402 - the same prompts as the engine benchmark
from serve_load import (  # noqa: E402 - the one client loop of every serve benchmark
    Ask,
    HoneServer,
    RssSampler,
    chat_asker,
    closed_loop,
    completion_asker,
    load_average,
    offer_runs,
    openai_client,
    summary,
    thread_asker,
    train_lora_run,
)

MODELS = ("base", "tuned")


@dataclass
class Bench:
    """What every turn shares: the settings, the prompts, the tuned run and the GGUFs."""
    tokens: int
    threads: int
    quant: str
    folder: Path                    # temporary: servers' databases and logs
    chats: list
    prompts: list[list[int]]        # the chats as the model's token ids (what hone sends an engine)
    eos: int
    run: Path | None                # the tuned LoRA run
    ggufs: dict[str, Path] = field(default_factory=dict)   # model -> GGUF (llama.cpp rows)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=64))


@dataclass
class Driver:
    """One measured target inside a turn: how to ask it, per model, and whose memory to sample; `warm`: the
    same with 2 tokens at most (the untimed warm-up), where it differs."""
    ask: dict[str, Ask]
    pid: int
    warm: dict[str, Ask] = field(default_factory=dict)


@dataclass
class Turn:
    """Started for one level, measured, stopped: yields its targets' drivers."""
    name: str
    open: Callable[[Bench], AsyncContextManager[dict[str, Driver]]]
    single_stream_only: bool = False


# -- the turns ----------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _hone(bench: Bench, engine: str, name: str, *extra: str):
    """A hone server for one turn: (server, its driver)."""
    from hone.home import hone_home
    from hone.models.catalogue import DEFAULT_MODEL

    # the servers share this process's hone home: the base GGUF is converted once for all (and bare llama.cpp)
    server = HoneServer(engine, bench.folder / name, "--inference-threads", str(bench.threads), "--max-batch", "16",
                        "--gguf-quant", bench.quant, *extra, hone_home=hone_home())
    client = openai_client(server.url, server.key)
    try:
        models = {"base": DEFAULT_MODEL}
        if bench.run is not None:
            models["tuned"] = offer_runs(server.db, [bench.run])[0]
        asks = {m: chat_asker(client, [served], bench.chats, bench.tokens) for m, served in models.items()}
        warm = {m: chat_asker(client, [served], bench.chats, 2) for m, served in models.items()}
        yield server, Driver(asks, server.process.pid, warm)
    finally:
        await client.close()
        server.stop()


def hone_turn(engine: str, *extra: str, name: str | None = None) -> Callable:
    @contextlib.asynccontextmanager
    async def turn(bench: Bench):
        async with _hone(bench, engine, name or engine, *extra) as (_, driver):
            yield {f"hone:{name or engine}": driver}
    return turn


@contextlib.asynccontextmanager
async def vllm_turn(bench: Bench):
    """hone:vllm, and bare:vllm on the vLLM server that hone's engine started (one vLLM up at a time)."""
    import psutil

    extra = () if bench.run is None else (f"--vllm-arg=--lora-modules=tuned={bench.run / 'adapter'}",)
    async with _hone(bench, "vllm", "vllm", *extra) as (server, driver):
        await closed_loop(driver.warm["base"], 1, 1)   # hone starts its vLLM child on the first request
        child = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                     if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline()))
        command = child.cmdline()
        client = openai_client(f"http://127.0.0.1:{command[command.index('--port') + 1]}", "none")
        try:
            models = ["base"] + (["tuned"] if bench.run is not None else [])
            yield {"hone:vllm": driver,
                   "bare:vllm": Driver({m: completion_asker(client, m, bench.prompts, bench.tokens) for m in models},
                                       child.pid, {m: completion_asker(client, m, bench.prompts, 2) for m in models})}
        finally:
            await client.close()


class BatchedLlamaCpp:
    """hone's BatchDecoder driven by one thread: `answer(ids, limit, started)` blocks until its row ends."""

    def __init__(self, gguf: Path, threads: int, eos: int):
        import queue

        from hone.llamacpp.batch import BatchDecoder

        self.decoder, self.eos, self.queue = BatchDecoder(str(gguf), threads, 16), eos, queue.Queue()
        self.waiters: dict[int, tuple] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from hone.llamacpp.batch import Sequence

        while True:
            while not self.decoder or not self.queue.empty():
                item = self.queue.get()
                if item is None:
                    return
                key, ids, limit, waiter = item
                self.waiters[key] = waiter
                self.decoder.add(Sequence(key, ids, limit, frozenset({self.eos})))
            tokens, ended = self.decoder.step()
            for key, _ in tokens:
                self.waiters[key][1].append(time.perf_counter())
            for key in ended:
                self.waiters.pop(key)[0].set()

    def answer(self, ids: list[int], limit: int, started: float) -> tuple:
        done, times = threading.Event(), []
        self.queue.put((id(times), ids, limit, (done, times)))
        done.wait()
        return times[0] - started, len(times)

    def close(self) -> None:
        self.queue.put(None)   # taken once the running rows have ended (a turn ends between levels: none run)
        self.thread.join()
        self.decoder.close()


@contextlib.asynccontextmanager
async def llamacpp_turn(bench: Bench):
    """llama-cpp-python one request at a time, and hone's batched decoder, on the GGUFs hone serves."""
    import llama_cpp

    llms = {m: llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=bench.threads,
                               n_threads_batch=bench.threads, verbose=False) for m, gguf in bench.ggufs.items()}
    batched = {m: BatchedLlamaCpp(gguf, bench.threads, bench.eos) for m, gguf in bench.ggufs.items()}

    def one_at_a_time(llm) -> Callable[[int, float], tuple]:
        def answer(i: int, started: float) -> tuple:
            first, made = None, 0
            for token in llm.generate(bench.prompts[i % len(bench.prompts)], temp=0.0, top_k=0, min_p=0.0,
                                      repeat_penalty=1.0, reset=True):
                first = first or time.perf_counter() - started
                made += 1
                if token == bench.eos or made >= bench.tokens:
                    break
            return first, made
        return answer

    def together(decoder: BatchedLlamaCpp) -> Callable[[int, float], tuple]:
        return lambda i, started: decoder.answer(bench.prompts[i % len(bench.prompts)], bench.tokens, started)

    try:
        yield {"bare:llamacpp": Driver({m: thread_asker(one_at_a_time(llm), bench.pool, serial=True)
                                        for m, llm in llms.items()}, os.getpid()),
               "bare:llamacpp-batched": Driver({m: thread_asker(together(d), bench.pool, serial=False)
                                                for m, d in batched.items()}, os.getpid())}
    finally:
        for decoder in batched.values():
            decoder.close()
        for llm in llms.values():
            llm.close()


@contextlib.asynccontextmanager
async def transformers_turn(bench: Bench):
    """hone's transformers engine (continuous batching) in this process, no HTTP."""
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.serve.catalog import ModelSource
    from hone.serve.engine import Engine
    from hone.serve.generation import Job, Sampling

    engine = Engine(max_batch=16, threads=bench.threads)
    sources = {"base": ModelSource(DEFAULT_MODEL, DEFAULT_MODEL, None, "system", 0)}
    if bench.run is not None:
        sources["tuned"] = ModelSource("tuned", DEFAULT_MODEL, str(bench.run), "bench", 0)

    def answer_from(source) -> Callable[[int, float], tuple]:
        def answer(i: int, started: float) -> tuple:
            done, first, answers = threading.Event(), [], []

            def emit(event):
                if event[0] == "delta" and not first:
                    first.append(time.perf_counter() - started)
                if event[0] in ("done", "error"):
                    answers.append(event[1])
                    done.set()
            engine.submit(Job(source, [bench.prompts[i % len(bench.prompts)]], 1, [bench.tokens], [], Sampling(0.0),
                              emit))
            done.wait()
            return (first or [None])[0], answers[0][0].tokens
        return answer

    try:
        yield {"bare:transformers": Driver({m: thread_asker(answer_from(s), bench.pool, serial=False)
                                            for m, s in sources.items()}, os.getpid())}
    finally:
        engine.close()


@contextlib.asynccontextmanager
async def hf_generate_turn(bench: Bench):
    """HF generate() in this process, one request at a time, the base model (no time to first token)."""
    import torch

    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import load_causal_lm

    model = load_causal_lm(DEFAULT_MODEL)

    def answer(i: int, started: float) -> tuple:
        ids = torch.tensor([bench.prompts[i % len(bench.prompts)]])
        out = model.generate(ids, max_new_tokens=bench.tokens, do_sample=False, pad_token_id=bench.eos)
        return None, out.shape[1] - ids.shape[1]
    yield {"bare:hf-generate": Driver({"base": thread_asker(answer, bench.pool, serial=True)}, os.getpid())}


def turns() -> list[Turn]:
    """Every target installed here, in the order they take turns at each level."""
    from hone.serve.engines.table import ENGINES

    installed = [name for name, spec in ENGINES.items() if spec.installed()]
    out = [Turn(f"hone:{e}", hone_turn(e)) for e in installed if e != "vllm"]
    out.append(Turn("hone:transformers-window", hone_turn("transformers", "--window-batching",
                                                          name="transformers-window")))
    if "vllm" in installed:
        out.append(Turn("hone:vllm + bare:vllm", vllm_turn))
    if "llamacpp" in installed:
        out.append(Turn("bare:llamacpp", llamacpp_turn))
    out.append(Turn("bare:transformers", transformers_turn))
    out.append(Turn("bare:hf-generate", hf_generate_turn, single_stream_only=True))
    return out


# -- the run ------------------------------------------------------------------------------------------------
async def measure(bench: Bench, levels: list[int], tuned_levels: set[int], rounds: int, per_client: int,
                  began: float) -> dict:
    rows: dict[tuple[str, str, int], list[dict]] = {}
    flips: dict[str, int] = {}
    for _ in range(rounds):
        for clients in levels:
            requests = max(4, clients * per_client)
            for turn in turns():
                if turn.single_stream_only and clients > 1:
                    continue
                started = time.perf_counter()
                async with turn.open(bench) as drivers:
                    for driver in drivers.values():   # untimed: models load, adapters load, caches fill
                        for model, ask in driver.ask.items():
                            await closed_loop(driver.warm.get(model, ask), 1, 1)
                    ready = time.perf_counter() - started
                    for model in MODELS:
                        if model == "tuned" and clients not in tuned_levels:
                            continue
                        # a turn with two targets (hone:vllm, bare:vllm) puts each first at every other measurement
                        flips[turn.name] = flips.get(turn.name, -1) + 1
                        for name, driver in list(drivers.items())[::-1 if flips[turn.name] % 2 else 1]:
                            if model not in driver.ask:
                                continue
                            load, sampler, t0 = load_average(), RssSampler(driver.pid), time.perf_counter()
                            results = await closed_loop(driver.ask[model], clients, requests)
                            row = {**summary(results, time.perf_counter() - t0, sampler.stop()), "load": load}
                            rows.setdefault((name, model, clients), []).append(row)
                            print(f"[{time.perf_counter() - began:5.0f} s] {name} {model} {clients} clients: "
                                  f"{row['tok_s']:.1f} tok/s, p50 {row['p50']:.2f} s (load {load:.2f})", flush=True)
                gc.collect()
                print(f"[{time.perf_counter() - began:5.0f} s] turn {turn.name} at {clients} clients: start and "
                      f"warm-up {ready:.0f} s, whole turn {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--tokens", type=int, default=24, help="max_tokens of every request")
    parser.add_argument("--requests-per-client", type=int, default=1, help="requests per level: max(4, this x clients)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quant", default="f16", help="the GGUF hone serves (--gguf-quant) and bare llama.cpp runs")
    parser.add_argument("--adapter", type=Path, help="a LoRA run folder to serve as `tuned` (default: train one)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of the run trained without --adapter")
    parser.add_argument("--tuned-clients", default="1,16", help="the levels that measure the tuned model too")
    parser.add_argument("--no-tuned", action="store_true", help="the base model only")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    import torch

    from hone.data.render import prompt_for_generation
    from hone.llamacpp.gguf import base_gguf, run_gguf
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import load_tokenizer
    from hone.serve.engines.table import ENGINES, auto_engine

    torch.set_num_threads(args.threads)   # the in-process engines' threads (servers: --inference-threads)
    began = time.perf_counter()
    chats = conversations(64)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    prompts = [tokenizer(prompt_for_generation(tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]
    folder = Path(tempfile.mkdtemp(prefix="hone-serve-bench-"))
    try:
        run = None if args.no_tuned else (args.adapter or train_lora_run(folder, args.steps, args.threads))
        bench = Bench(args.tokens, args.threads, args.quant, folder, chats, prompts, tokenizer.eos_token_id, run,
                      pool=ThreadPoolExecutor(max_workers=max(levels)))
        if ENGINES["llamacpp"].installed():   # once, before the levels: what hone's llama.cpp engine serves
            bench.ggufs["base"] = base_gguf(DEFAULT_MODEL, args.quant)
            if run is not None:
                bench.ggufs["tuned"] = run_gguf(run, args.quant)
        print(f"[{time.perf_counter() - began:5.0f} s] ready: tuned run {run}, GGUFs {bench.ggufs}; load average "
              f"{load_average():.2f}", flush=True)
        tuned_levels = {int(c) for c in args.tuned_clients.split(",")}
        rows = asyncio.run(measure(bench, levels, tuned_levels, args.rounds, args.requests_per_client, began))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(rows, auto_engine(), args, time.perf_counter() - began)


def report(rows: dict, default: str, args, seconds: float) -> None:
    print(f"default engine here: {default}; {args.threads} thread(s); {args.tokens} new tokens at most; "
          f"{args.rounds} round(s), medians; the whole run {seconds:.0f} s")
    print(f"{'target':26} {'model':5} {'clients':>7} {'reqs':>5} {'tokens':>6} {'tok/s':>7} {'ttft p50':>8} "
          f"{'p50 s':>7} {'p99 s':>7} {'peak RSS MB':>11} {'load':>5}")
    table = {}
    for (name, model, clients), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        med = {k: statistics.median(r[k] or 0.0 for r in runs) for k in runs[0]}
        table[(name, model, clients)] = med
        print(f"{name:26} {model:5} {clients:7d} {med['requests']:5.0f} {med['tokens']:6.0f} {med['tok_s']:7.1f} "
              f"{med['ttft_p50']:8.2f} {med['p50']:7.2f} {med['p99']:7.2f} {med['rss_mb']:11.0f} {med['load']:5.2f}")

    def ratio(a: str, b: str, model: str, clients: int, key: str) -> float | None:
        x, y = table.get((a, model, clients)), table.get((b, model, clients))
        return round(x[key] / y[key], 3) if x and y and y[key] else None

    bare_default = "bare:llamacpp-batched" if default == "llamacpp" else f"bare:{default}"
    out: dict = {"default_engine": default}
    for model in MODELS:
        prefix = "" if model == "base" else "tuned_"
        out.update({f"{prefix}{k}": v for k, v in {
            "single_stream_vs_llamacpp": ratio(f"hone:{default}", "bare:llamacpp", model, 1, "tok_s"),
            "clients16_vs_window_batching": ratio(f"hone:{default}", "hone:transformers-window", model, 16, "tok_s"),
            "clients64_vs_window_batching": ratio(f"hone:{default}", "hone:transformers-window", model, 64, "tok_s"),
            "overhead_p50_vs_bare_engine": ratio(f"hone:{default}", bare_default, model, 16, "p50"),
            "overhead_p50_vs_bare_engine_clients64": ratio(f"hone:{default}", bare_default, model, 64, "p50"),
            "transformers_continuous_vs_window": ratio("hone:transformers", "hone:transformers-window", model, 16,
                                                       "tok_s"),
            "vllm_single_stream_vs_bare_vllm": ratio("hone:vllm", "bare:vllm", model, 1, "tok_s"),
            "vllm_overhead_p50_vs_bare_vllm": ratio("hone:vllm", "bare:vllm", model, 16, "p50"),
            "vllm_overhead_p50_vs_bare_vllm_clients64": ratio("hone:vllm", "bare:vllm", model, 64, "p50"),
            "vllm_clients16_vs_default": ratio("hone:vllm", f"hone:{default}", model, 16, "tok_s"),
            "vllm_clients64_vs_default": ratio("hone:vllm", f"hone:{default}", model, 64, "tok_s"),
            "vllm_single_stream_vs_llamacpp": ratio("hone:vllm", "bare:llamacpp", model, 1, "tok_s"),
        }.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
