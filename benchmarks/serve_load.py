"""The load generator every serve benchmark uses: one closed-loop client loop, the servers it drives, a tuned run.

    closed_loop(ask, clients, requests)   `clients` clients share `requests` requests; each client sends its
                                          next request when its last one has ended. `ask(i, started)` answers
                                          request i and returns (time to first token or None, tokens).
    chat_asker / completion_asker         ask through the official openai client, streamed, usage included
                                          (hone serve's chat endpoint; a bare server's completions endpoint)
    thread_asker                          ask a blocking in-process engine from a pool of `clients` threads,
                                          one request at a time behind a lock when `serial`
    HoneServer                            a real `hone serve` on loopback, with a key of org ORG
    train_lora_run / offer_runs           a real LoRA run on the embedded model, offered to ORG as finished
                                          fine-tuning jobs (so hone serves it as `ft:...`)
benchmarks/serve_throughput.py, many_adapters.py and capture_overhead.py import it.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Awaitable, Callable

ORG = "bench"   # HoneServer's key belongs to this org; offer_runs offers runs to it
DEMO = Path(__file__).resolve().parents[1] / "src/hone/datasets/orders"
Ask = Callable[[int, float], Awaitable[tuple[float | None, int]]]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def load_average() -> float:
    return os.getloadavg()[0]


async def closed_loop(ask: Ask, clients: int, requests: int) -> list[dict]:
    """`requests` requests from `clients` closed-loop clients: per request ttft (None: not measured), latency
    and completion tokens, in the order they ended."""
    todo = iter(range(requests))   # shared: each client takes the next request number when it is free
    results: list[dict] = []

    async def one_client() -> None:
        for i in todo:
            started = time.perf_counter()
            ttft, tokens = await ask(i, started)
            results.append({"ttft": ttft, "latency": time.perf_counter() - started, "tokens": tokens})

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


async def _streamed(stream, text_of, started: float) -> tuple[float | None, int]:
    """Time to the first chunk with text, and the completion tokens of the usage chunk."""
    first, used = None, 0
    async for chunk in stream:
        if first is None and chunk.choices and text_of(chunk.choices[0]):
            first = time.perf_counter() - started
        if chunk.usage:
            used = chunk.usage.completion_tokens
    return first, used


def chat_asker(client, models: list[str], chats: list, tokens: int) -> Ask:
    """Request i: a streamed greedy chat completion of chat i for model i mod len(models)."""
    async def ask(i: int, started: float) -> tuple[float | None, int]:
        stream = await client.chat.completions.create(
            model=models[i % len(models)], messages=chats[i % len(chats)], max_tokens=tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        return await _streamed(stream, lambda choice: choice.delta.content, started)
    return ask


def completion_asker(client, model: str, prompts: list, tokens: int) -> Ask:
    """Request i: a streamed greedy completion of prompt i (text or token ids), e.g. for a bare vLLM server."""
    async def ask(i: int, started: float) -> tuple[float | None, int]:
        stream = await client.completions.create(model=model, prompt=prompts[i % len(prompts)], max_tokens=tokens,
                                                 temperature=0, stream=True, stream_options={"include_usage": True})
        return await _streamed(stream, lambda choice: choice.text, started)
    return ask


def thread_asker(answer: Callable[[int, float], tuple[float | None, int]], pool: ThreadPoolExecutor,
                 serial: bool) -> Ask:
    """Request i: the blocking `answer(i, started)` on a thread of `pool` (as many threads as clients);
    `serial`: one request at a time (an engine that runs one sequence)."""
    lock = threading.Lock()

    def call(i: int, started: float) -> tuple[float | None, int]:
        if not serial:
            return answer(i, started)
        with lock:
            return answer(i, started)

    async def ask(i: int, started: float) -> tuple[float | None, int]:
        return await asyncio.get_running_loop().run_in_executor(pool, call, i, started)
    return ask


def openai_client(url: str, key: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=1800)


async def hone_level(server: HoneServer, model: str | list[str], chats, clients: int, requests: int,
                     tokens: int) -> list[dict]:
    """The closed loop of streamed chat requests against a hone server; `model` may be a list: request i asks
    for model i mod its length (benchmarks/many_adapters.py)."""
    client = openai_client(server.url, server.key)
    try:
        return await closed_loop(chat_asker(client, [model] if isinstance(model, str) else model, chats, tokens),
                                 clients, requests)
    finally:
        await client.close()


def summary(results: list[dict], seconds: float, rss: float) -> dict:
    return {"requests": len(results), "tokens": sum(r["tokens"] for r in results),
            "tok_s": sum(r["tokens"] for r in results) / seconds,
            "ttft_p50": percentile([r["ttft"] or 0.0 for r in results], 0.5),   # 0: not measured (generate())
            "p50": percentile([r["latency"] for r in results], 0.5),
            "p99": percentile([r["latency"] for r in results], 0.99), "rss_mb": rss}


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
    """`hone serve --engine ENGINE --workers 0 --rate-limit 0 EXTRA...` on a free loopback port, its own
    process group (stop() ends the engine children too), a key of org ORG. Its database and log are in `home`,
    which is also its HONE_HOME unless `hone_home` is given (a GGUF cache shared by servers started in turn)."""

    def __init__(self, engine: str, home: Path, *extra: str, hone_home: Path | None = None,
                 start_seconds: float = 300, src: Path | None = None):
        """`src`: another checkout's src/ folder to run hone from (PYTHONPATH), e.g. main's, for before/after runs."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HONE_HOME": str(hone_home or home), "HF_HUB_OFFLINE": "1"}
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        self.db, self.log_path = f"sqlite:///{home / 'serve.db'}", home / "serve.log"
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hone.cli", "serve", "--port", str(self.port), "--db", self.db, "--workers",
                 "0", "--engine", engine, "--rate-limit", "0", *extra], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            keys = [sys.executable, "-m", "hone.cli", "keys", "create", "--org", ORG, "--db", self.db]
            self.key = subprocess.run(keys, env=env, capture_output=True, text=True, check=True).stdout.strip()
            deadline = time.monotonic() + start_seconds
            while True:
                try:
                    urllib.request.urlopen(f"{self.url}/health", timeout=5).close()
                    return
                except OSError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"hone serve --engine {engine} did not start: {self.log_path}") from None
                    time.sleep(0.3)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to what is left of it after 60 s."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)   # engine children that outlived the server
        except ProcessLookupError:
            pass


def train_lora_run(folder: Path, steps: int, threads: int) -> Path:
    """A real LoRA run (r16) on the embedded model: `steps` optimizer steps on 32 demo `orders` chats, no base
    score, no forgetting probe, a 2-item test."""
    import hone
    from hone.models.catalogue import DEFAULT_MODEL

    lines = (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()
    data = folder / "data"
    data.mkdir(parents=True)
    for name, rows in (("train", lines[:32]), ("validation", lines[32:36]), ("test", lines[36:38])):
        (data / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = hone.train(model=DEFAULT_MODEL, objective="sft", method="lora", max_steps=steps,
                        output=str(folder / "run-00"), data=str(data / "train.jsonl"),
                        data__validation=str(data / "validation.jsonl"), data__test=str(data / "test.jsonl"),
                        train__batch_size=8, train__micro_batch_size=8, train__threads=threads,
                        eval__base=False, eval__forgetting=False, eval__samples=0, eval__max_new_tokens=4,
                        train__report_to="none")
    return Path(result.run_dir)


def offer_runs(db_url: str, runs: list[Path]) -> list[str]:
    """The runs as succeeded fine-tuning jobs of ORG (what a worker records; once per database): their ft:
    model names."""
    from sqlalchemy import select

    from hone.models.catalogue import DEFAULT_MODEL
    from hone.serve import db

    names = []
    with db.session(db_url) as s:
        for i, run in enumerate(runs):
            job_id = f"ftjob-bench{i:05d}"
            name = f"ft:{DEFAULT_MODEL}:{ORG}:a{i:02d}:{job_id[-8:]}"
            names.append(name)
            if s.scalar(select(db.Job).where(db.Job.id == job_id)) is not None:
                continue
            s.add(db.Job(id=job_id, org=ORG, model=DEFAULT_MODEL, training_file="file-bench", suffix=f"a{i:02d}",
                         seed=0, method={"type": "supervised", "supervised": {"hyperparameters": {}}},
                         status="succeeded", created_at=db.now(), finished_at=db.now(), result_files=[],
                         attempts=1, model_deleted=0, fine_tuned_model=name, run_dir=str(run.resolve())))
        s.commit()
    return names
