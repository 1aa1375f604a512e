"""The llama.cpp engine: llama-cpp-python in a child process, on the GGUF that `hone export` writes.

A base model is converted once by llama.cpp's converter into the hone home (`gguf/`); a tuned run is
exported with `hone export RUN --format gguf` on its first request (verified against the run's own
model, as every export is) and served from RUN/exports/gguf-QUANT afterwards, so the first request to a
tuned model waits for its export (~30-60 s on 2 cores) and later ones do not. LoRA adapters are served
merged into their own GGUF, one model per tuned run: llama.cpp can apply an adapter GGUF per context,
but llama-cpp-python 0.3.36 sets it once when a model loads, so per-request adapters over one shared
base are not done here (the transformers engine does them).

Generation runs in a child process (llamacpp_child.py) so that a crash or a kill of llama.cpp costs the
requests it was answering, each told so in one line, and nothing else: the next request starts a new
child. The parent keeps the OpenAI side: it feeds the model's HF token ids, and turns the ids that come
back into streamed text, stop strings and usage counts with generation.RowProgress, exactly as the
transformers engine does. Requests are answered one at a time, in order (llama-cpp-python's Llama runs
one sequence); each choice of a request is one sequence, seeded with seed + its index.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hone.errors import UserError
from hone.serve.engine import BASE, ModelTokenizers, tuned_artifact
from hone.serve.generation import Job, Row, RowProgress, eos_ids

log = logging.getLogger("hone.serve")
QUANTS = ("f16", "q8_0", "f32")   # what llama.cpp's converter writes without the compiled quantizer


class EngineDied(UserError):
    """The engine's child process ended while it was answering."""


def run_folder(tuned: str | Path) -> Path | None:
    """The hone run a tuned model comes from (its folder holds run.json), or None."""
    path = Path(tuned)
    for folder in (path, path.parent):
        if (folder / "run.json").is_file():
            return folder
    return None


def can_serve(source) -> bool:
    """Whether llama.cpp can run `source`: a base model, or a run whose method exports to one GGUF."""
    if source.tuned is BASE:
        return True
    from hone.exporting.formats import MODEL
    from hone.exporting.run import trained_method
    from hone.registry.runs import read_record

    run = run_folder(source.tuned)
    if run is None:
        return False
    try:
        return trained_method(run, read_record(run)) in MODEL
    except UserError:
        return False


def base_gguf(spec: str, quant: str) -> Path:
    """The base model as GGUF in the hone home, converted once by llama.cpp's converter."""
    from rich.console import Console

    from hone.exporting.gguf import convert_model, tool_missing
    from hone.home import hone_home
    from hone.models.catalogue import resolve_model

    folder = resolve_model(spec).path.resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    target = hone_home() / "gguf" / f"{folder.name}-{digest}.{quant}.gguf"
    if not target.is_file():
        if missing := tool_missing("converter"):
            raise UserError(missing)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        convert_model(folder, tmp, quant, folder.name, Console(stderr=True))
        os.replace(tmp, target)
    return target


def run_gguf(run: Path, quant: str) -> Path:
    """The run's GGUF export (`hone export RUN --format gguf --quant QUANT`), made on first use."""
    from rich.console import Console

    from hone.exporting.run import export_run
    from hone.registry.runs import read_record

    for entry in read_record(run).get("exports", []):
        path = Path(entry.get("path", "")) / entry.get("file", "")
        if entry.get("format") == "gguf" and entry.get("quant") == quant and path.is_file():
            return path
    result = export_run(run, "gguf", quant, console=Console(stderr=True))
    return result.folder / result.manifest["main_files"][0]


class LlamaCppEngine(ModelTokenizers):
    """Answers Jobs through llama.cpp in a child process, one request at a time."""

    def __init__(self, threads: int | None = None, quant: str = "f16", default_max_tokens: int = 512):
        super().__init__()
        if quant not in QUANTS:
            raise UserError(f"--gguf-quant {quant}: the llamacpp engine serves {', '.join(QUANTS)}")
        self.quant, self.default_max_tokens = quant, default_max_tokens
        self._threads = threads
        self._ggufs: dict[str, Path] = {}      # tuned key or base spec -> its GGUF
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self._conn: Any = None
        self.calls = 0

    # -- what the router calls -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve_forever, name="hone-llamacpp", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def unload(self, source) -> None:
        if source.tuned is not BASE:
            self._ggufs.pop(self._key(source), None)

    def loaded(self) -> list[str]:
        return [key for key in self._ggufs if Path(key).is_dir()]

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._stop_child()

    # -- the GGUF and the child ------------------------------------------------------------------
    def gguf(self, source) -> Path:
        key = self._key(source) if source.tuned is not BASE else source.base
        if key not in self._ggufs:
            if source.tuned is BASE:
                self._ggufs[key] = base_gguf(source.base, self.quant)
            else:
                run = run_folder(tuned_artifact(source.tuned))
                if run is None or not can_serve(source):
                    raise UserError(f"llama.cpp serves hone runs that export to one GGUF, and {source.tuned} is "
                                    "not one (prompt/prefix tuning, bottleneck adapters, or not a run folder); "
                                    "serve it with --engine transformers or auto")
                self._ggufs[key] = run_gguf(run, self.quant)
        return self._ggufs[key]

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _child(self):
        """The connection to a running child, started if there is none (or the last one died)."""
        if not self._alive():
            from hone.hardware import pick_threads

            self._stop_child()
            ours, theirs = socket.socketpair()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hone.serve.engines.llamacpp_child", str(theirs.fileno()),
                 str(pick_threads(self._threads))], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            theirs.close()   # the child's end lives in the child only: its death reads as EOF here
            self._conn = Connection(ours.detach())
        return self._conn

    def _stop_child(self) -> None:
        if self._conn is not None:
            self._conn.close()   # the child reads EOF and returns
            self._conn = None
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    # -- the engine thread -----------------------------------------------------------------------
    def _serve_forever(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled:
                continue
            try:
                self._answer(job)
            except (EOFError, OSError) as exc:
                code = self.process.poll() if self.process is not None else None
                self._stop_child()
                log.error("the llama.cpp child process died (exit code %s): %s", code, exc)
                job.fail(EngineDied(f"the llama.cpp engine process died (exit code {code}) while answering; "
                                    "it restarts with the next request"))
            except Exception as exc:  # noqa: BLE001 - reported to the request, the thread goes on
                job.fail(exc)

    def _answer(self, job: Job) -> None:
        gguf = self.gguf(job.source)
        tokenizer = self.tokenizer(job.source)
        rows = [Row(job, p * job.n + j, prompt, job.max_tokens[p])
                for p, prompt in enumerate(job.prompts) for j in range(job.n)]
        progress = RowProgress(tokenizer, rows, eos_ids(None, tokenizer))
        conn = self._child()
        self.calls += 1
        s = job.sampling
        conn.send(("generate", {"id": self.calls, "model": str(gguf), "n_ctx": self.context_length(job.source) or 2048,
                                "rows": [(row.prompt, row.limit) for row in rows], "temperature": s.temperature,
                                "top_p": s.top_p, "seed": s.seed, "eos": sorted(progress.eos)}))
        cancelled = False
        while True:
            while not conn.poll(1.0):
                if not self._alive():
                    raise EOFError("the child is gone")
            message = conn.recv()
            if message[0] == "token":
                row = rows[message[1]]
                if not row.done:
                    progress.step(row, message[2])
                    if row.done and row.tokens < row.limit and message[2] not in progress.eos:
                        conn.send(("cancel", self.calls, message[1]))   # a stop string, or a client gone
            elif message[0] == "row_end":
                row = rows[message[1]]
                if not row.done:
                    progress.end(row, progress.text(row), "length")
            elif message[0] == "done":
                return
            elif message[0] == "error":
                raise UserError(f"llama.cpp failed: {message[1]}")
            if job.cancelled and not cancelled:
                conn.send(("cancel", self.calls, -1))
                cancelled = True
