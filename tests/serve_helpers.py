"""A real `hone serve` on loopback for the serve tests, and small helpers to drive it."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hone_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "HONE_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in [n for n in env if n.startswith("HONE_SERVE_") or n == "HONE_DB"]:
        del env[name]
    return env


@dataclass
class Server:
    url: str                       # http://127.0.0.1:PORT/v1
    db: str                        # the service database URL
    home: Path
    process: subprocess.Popen
    log: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def key(self, org: str) -> str:
        """A new API key for `org`, made the way a user does: `hone keys create` prints it alone."""
        done = subprocess.run([sys.executable, "-m", "hone.cli", "keys", "create", "--org", org, "--db", self.db],
                              env=hone_env(self.home), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def client(self, org: str, strict: bool = True):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=self.key(org), max_retries=0, timeout=60,
                      _strict_response_validation=strict)

    def start_worker(self, *args: str) -> subprocess.Popen:
        log = (self.home / f"worker-{len(self.workers)}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "hone.cli", "worker", "--db", self.db, *args],
                                env=hone_env(self.home), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_ignore_sigint)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        """SIGTERM every worker started here and wait: a test leaves no worker behind for the next."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        for proc in [*self.workers, self.process]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.process]:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_server(home: Path, *args: str, workers: int = 1, db: str | None = None) -> Server:
    """`hone serve` on a free loopback port with its own database (SQLite unless `db`); returns once it answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = db or f"sqlite:///{home / 'serve.db'}"
    log = home / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "hone.cli", "serve", "--port", str(port), "--db", db,
                             "--workers", str(workers), *args], env=hone_env(home),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/v1", db, home, proc, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"hone serve did not start:\n{log.read_text()}")
            time.sleep(0.2)


def jsonl(rows: list[dict], name: str = "train.jsonl") -> io.BytesIO:
    buf = io.BytesIO("\n".join(json.dumps(r) for r in rows).encode())
    buf.name = name
    return buf


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean", "amber", "lemon"]
    return [{"messages": [{"role": "system", "content": "Reverse the word."},
                          {"role": "user", "content": words[(i + offset) % len(words)]},
                          {"role": "assistant", "content": words[(i + offset) % len(words)][::-1]}]}
            for i in range(n)]


def wait_for(check, timeout: float = 240, every: float = 0.3, what: str = "condition"):
    """Poll `check()` until it returns something truthy (servers and workers are separate processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def wait_finished(client, job_id: str, timeout: float = 240):
    def done():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in ("succeeded", "failed", "cancelled") else None
    return wait_for(done, timeout, what=f"job {job_id} to finish")


def _ignore_sigint() -> None:
    """Workers start with SIGINT ignored, as under `nohup`, `cmd &` in a script or some CI runners: the
    worker must still stop training on cancel/pause (it once dropped them silently in that case)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class InProcess:
    """`hone serve`'s app called in-process (starlette's TestClient): no port, no subprocess, no worker."""
    http: object                   # a TestClient; send `headers=in_process.auth`
    auth: dict[str, str]           # the Authorization header of a key for org "acme"
    settings: object


def in_process_app(tiny_model: Path, tmp: Path, **settings) -> InProcess:
    """The whole app (files, jobs, inference) over the tiny model as base "tiny", rate limit off."""
    from fastapi.testclient import TestClient

    from hone.serve.app import create_app
    from hone.serve.auth import create_key
    from hone.serve.settings import ServeSettings

    # transformers, not `auto` (llama.cpp where installed, whose first request converts the model to GGUF)
    config = ServeSettings(db=f"sqlite:///{tmp / 'serve.db'}", base_models={"tiny": str(tiny_model)},
                           rate_limit=0, **{"engine": "transformers", **settings})
    http = TestClient(create_app(config), raise_server_exceptions=False)
    return InProcess(http, {"Authorization": f"Bearer {create_key('acme', config.db)}"}, config)
