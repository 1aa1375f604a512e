"""hone serve's engines under load, against the bare engines: tokens/s, time to first token, latency.

    .venv/bin/python benchmarks/serve_throughput.py [--clients 1,4,16] [--tokens 48] [--rounds 1] [--threads 2]

One run, on the embedded model (SmolLM2-135M-Instruct), greedy, the demo `orders` test chats (the same
prompts benchmarks/serve_inference.py uses), alternating the targets at every concurrency level:
  hone:<engine>             `hone serve --engine ENGINE` (a real server on loopback, the official openai
                            client streaming, usage included) for every installed engine
  hone:transformers-window  `hone serve --engine transformers --window-batching` (batching before this issue)
  bare:llamacpp             llama-cpp-python in this process on the same GGUF hone serves, one request at
                            a time behind a lock (a Llama runs one sequence)
  bare:llamacpp-batched     hone's BatchDecoder (hone/llamacpp/batch.py: many sequences per llama_decode) in
                            this process on that GGUF, no HTTP and no child: the bare engine under hone:llamacpp
  hone:vllm / bare:vllm     where vLLM is installed (make vllm, or HONE_VLLM_PYTHON): hone serve --engine vllm,
                            and vLLM's own server (the one hone starts) driven with the same token ids directly
  bare:hf-generate          HF generate() in this process, one request at a time (single stream only)
  bare:transformers         hone's transformers engine (continuous batching) in this process, no HTTP
Each level runs `clients` closed-loop clients, 2 x clients requests in all (at least 4). Per target and
level: completion tokens/s over the wall time, time to first token and latency p50/p99, peak RSS (the
server's process tree, or this process for a bare row). The last line is one JSON object with
single_stream_vs_llamacpp (hone's default engine, 1 client, tok/s over bare llama.cpp's),
clients16_vs_window_batching (default engine at 16 clients over hone:transformers-window) and
overhead_p50_vs_bare_engine (default engine's p50 latency at 16 clients over its bare engine's: the batched
decoder for llama.cpp).
Speeds move with the machine's load: read ratios within one run (field notes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import conversations  # noqa: E402 - the same prompts as the engine benchmark


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class RssSampler:
    """Peak resident memory of a process tree, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except Exception:  # noqa: BLE001 - a child came or went mid-sample
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


class HoneServer:
    def __init__(self, engine: str, home: Path, threads: int, *extra: str, src: Path | None = None):
        """`src`: another checkout's src/ folder to run hone from (PYTHONPATH), e.g. main's, for before/after runs."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HONE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        self.db = f"sqlite:///{home / 'serve.db'}"
        self.log = (home / "serve.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hone.cli", "serve", "--port", str(self.port), "--db", self.db, "--workers", "0",
             "--engine", engine, "--inference-threads", str(threads), "--max-batch", "16", "--rate-limit", "0",
             *extra], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        keys = [sys.executable, "-m", "hone.cli", "keys", "create", "--org", "bench", "--db", self.db]
        self.key = subprocess.run(keys, env=env, capture_output=True, text=True, check=True).stdout.strip()
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hone serve --engine {engine} did not start: {home}/serve.log") from None
                time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def hone_level(server: HoneServer, model: str | list[str], chats, clients: int, requests: int,
                     tokens: int) -> list[dict]:
    """`requests` streamed chat requests from `clients` closed-loop clients: per request ttft, latency, tokens.
    `model` may be a list: request i asks for model i mod its length (benchmarks/many_adapters.py)."""
    models = [model] if isinstance(model, str) else model
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=server.key, max_retries=0,
                         timeout=1800)
    todo = list(range(requests))
    results: list[dict] = []

    async def one_client() -> None:
        while todo:
            i = todo.pop(0)
            started = time.perf_counter()
            first, used = None, 0
            stream = await client.chat.completions.create(model=models[i % len(models)], messages=chats[i % len(chats)],
                                                          max_tokens=tokens, temperature=0, stream=True,
                                                          stream_options={"include_usage": True})
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
                if chunk.usage:
                    used = chunk.usage.completion_tokens
            results.append({"ttft": first or 0.0, "latency": time.perf_counter() - started, "tokens": used})

    await asyncio.gather(*(one_client() for _ in range(clients)))
    await client.close()
    return results


def bare_level(answer, chats, clients: int, requests: int, serial: bool = True) -> list[dict]:
    """The same closed loop over an in-process `answer(chat, started) -> (ttft, tokens)`; `serial`: one
    request at a time (a lock), else as many at once as there are clients."""
    import contextlib

    lock = threading.Lock() if serial else contextlib.nullcontext()
    todo, results = list(range(requests)), []

    def one_client() -> None:
        while True:
            try:
                i = todo.pop(0)
            except IndexError:
                return
            started = time.perf_counter()
            with lock:
                ttft, used = answer(chats[i % len(chats)], started)
            results.append({"ttft": ttft, "latency": time.perf_counter() - started, "tokens": used})

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class BatchedLlamaCpp:
    """hone's BatchDecoder driven by one thread: `answer(ids, limit)` blocks until its row ends."""

    def __init__(self, gguf: Path, threads: int, eos: int):
        import queue

        from hone.llamacpp.batch import BatchDecoder

        self.decoder, self.eos, self.queue = BatchDecoder(str(gguf), threads, 16), eos, queue.Queue()
        self.waiters: dict[int, tuple] = {}
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from hone.llamacpp.batch import Sequence

        while True:
            while not self.decoder or not self.queue.empty():
                key, ids, limit, waiter = self.queue.get()
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


async def vllm_level(url: str, prompts, clients: int, requests: int, tokens: int) -> list[dict]:
    """The closed loop against vLLM's own server: streamed completions of the same token ids hone sends."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1800)
    todo = list(range(requests))
    results: list[dict] = []

    async def one_client() -> None:
        while todo:
            i = todo.pop(0)
            started = time.perf_counter()
            first, used = None, 0
            stream = await client.completions.create(model="base", prompt=prompts[i % len(prompts)], max_tokens=tokens,
                                                     temperature=0, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter() - started
                if chunk.usage:
                    used = chunk.usage.completion_tokens
            results.append({"ttft": first or 0.0, "latency": time.perf_counter() - started, "tokens": used})

    await asyncio.gather(*(one_client() for _ in range(clients)))
    await client.close()
    return results


def summary(results: list[dict], seconds: float, rss: float) -> dict:
    return {"requests": len(results), "tokens": sum(r["tokens"] for r in results),
            "tok_s": sum(r["tokens"] for r in results) / seconds,
            "ttft_p50": percentile([r["ttft"] or 0.0 for r in results], 0.5),   # 0: not measured (generate())
            "p50": percentile([r["latency"] for r in results], 0.5),
            "p99": percentile([r["latency"] for r in results], 0.99), "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quant", default="f16", help="the GGUF hone serves (--gguf-quant) and bare llama.cpp runs")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    from hone.data.render import prompt_for_generation
    from hone.llamacpp.gguf import base_gguf
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import load_causal_lm, load_tokenizer
    from hone.serve.engines.table import ENGINES, auto_engine

    chats = conversations(32)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    prompts = [tokenizer(prompt_for_generation(tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]
    default = auto_engine()
    home = Path(tempfile.mkdtemp(prefix="hone-serve-bench-"))
    engines = [name for name, spec in ENGINES.items() if spec.installed()]
    servers = {f"hone:{name}": HoneServer(name, home / name, args.threads, "--gguf-quant", args.quant)
               for name in engines}
    servers["hone:transformers-window"] = HoneServer("transformers", home / "window", args.threads, "--window-batching")
    bare = {}
    if "llamacpp" in engines:
        import llama_cpp

        gguf = base_gguf(DEFAULT_MODEL, args.quant)
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                              verbose=False)

        def llamacpp_answer(chat, started):
            ids, first = prompts[chats.index(chat)], None
            made = 0
            for token in llm.generate(ids, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True):
                first = first or time.perf_counter() - started
                made += 1
                if token == tokenizer.eos_token_id or made >= args.tokens:
                    break
            return first, made
        bare["bare:llamacpp"] = llamacpp_answer
        batched = BatchedLlamaCpp(gguf, args.threads, tokenizer.eos_token_id)
        bare["bare:llamacpp-batched"] = lambda chat, started: batched.answer(prompts[chats.index(chat)], args.tokens,
                                                                             started)
    vllm_server = None
    if "vllm" in engines:
        from hone.serve.engines.vllm import VllmEngine

        vllm_engine = VllmEngine()
        vllm_server = vllm_engine.server(DEFAULT_MODEL)
    import torch

    torch.set_num_threads(args.threads)
    model = load_causal_lm(DEFAULT_MODEL)

    def hf_answer(chat, started):
        ids = torch.tensor([prompts[chats.index(chat)]])
        out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        return None, len(new)   # generate() returns at the end: no time to first token
    bare["bare:hf-generate"] = hf_answer

    from hone.serve.engine import Engine
    from hone.serve.generation import Job, Sampling

    engine = Engine(max_batch=16, threads=args.threads)
    source = type("Source", (), {"id": DEFAULT_MODEL, "base": DEFAULT_MODEL, "tuned": None})()

    def engine_answer(chat, started):
        done, first, answers = threading.Event(), [], []

        def emit(event):
            if event[0] == "delta" and not first:
                first.append(time.perf_counter() - started)
            if event[0] in ("done", "error"):
                answers.append(event[1])
                done.set()
        engine.submit(Job(source, [prompts[chats.index(chat)]], 1, [args.tokens], [], Sampling(0.0), emit))
        done.wait()
        return (first or [None])[0], answers[0][0].tokens
    bare["bare:transformers"] = engine_answer

    try:
        for server in servers.values():   # warm up: models load, the GGUF is converted once
            asyncio.run(hone_level(server, DEFAULT_MODEL, chats, 1, 1, 4))
        bare_level(engine_answer, chats, 1, 1)
        if vllm_server is not None:
            asyncio.run(vllm_level(vllm_server.url, prompts, 1, 1, 4))
        rows: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for clients in levels:
                requests = max(4, 2 * clients)
                for name, server in servers.items():
                    sampler, started = RssSampler(server.process.pid), time.perf_counter()
                    results = asyncio.run(hone_level(server, DEFAULT_MODEL, chats, clients, requests, args.tokens))
                    rows.setdefault((name, clients), []).append(
                        summary(results, time.perf_counter() - started, sampler.stop()))
                for name, answer in bare.items():
                    if name == "bare:hf-generate" and clients > 1:
                        continue
                    sampler, started = RssSampler(os.getpid()), time.perf_counter()
                    results = bare_level(answer, chats, clients, requests,
                                         serial=name not in ("bare:transformers", "bare:llamacpp-batched"))
                    rows.setdefault((name, clients), []).append(
                        summary(results, time.perf_counter() - started, sampler.stop()))
                if vllm_server is not None:
                    sampler, started = RssSampler(vllm_server.process.pid), time.perf_counter()
                    results = asyncio.run(vllm_level(vllm_server.url, prompts, clients, requests, args.tokens))
                    rows.setdefault(("bare:vllm", clients), []).append(
                        summary(results, time.perf_counter() - started, sampler.stop()))
    finally:
        engine.close()
        if vllm_server is not None:
            vllm_engine.close()
        for server in servers.values():
            server.stop()

    print(f"default engine here: {default}; {args.threads} thread(s); {args.tokens} new tokens at most; "
          f"{args.rounds} round(s), medians")
    print(f"{'target':26} {'clients':>7} {'reqs':>5} {'tokens':>6} {'tok/s':>7} {'ttft p50':>8} {'p50 s':>7} "
          f"{'p99 s':>7} {'peak RSS MB':>11}")
    table = {}
    for (name, clients), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = {k: statistics.median(r[k] or 0.0 for r in runs) for k in runs[0]}
        table[(name, clients)] = med
        print(f"{name:26} {clients:7d} {med['requests']:5.0f} {med['tokens']:6.0f} {med['tok_s']:7.1f} "
              f"{med['ttft_p50']:8.2f} {med['p50']:7.2f} {med['p99']:7.2f} {med['rss_mb']:11.0f}")

    def ratio(a, b, key):
        return round(table[a][key] / table[b][key], 3) if a in table and b in table and table[b][key] else None
    top = max(levels)
    bare_default = "bare:llamacpp-batched" if default == "llamacpp" else f"bare:{default}"
    print(json.dumps({
        "default_engine": default,
        "single_stream_vs_llamacpp": ratio((f"hone:{default}", 1), ("bare:llamacpp", 1), "tok_s"),
        f"clients{top}_vs_window_batching": ratio((f"hone:{default}", top), ("hone:transformers-window", top), "tok_s"),
        "overhead_p50_vs_bare_engine": ratio((f"hone:{default}", top), (bare_default, top), "p50"),
        "transformers_continuous_vs_window": ratio(("hone:transformers", top), ("hone:transformers-window", top),
                                                   "tok_s"),
    }))


if __name__ == "__main__":
    main()
