"""The llama.cpp engine: llama.cpp in a child process, many requests decoding together, on hone's GGUFs.

The GGUF of a base model or a tuned run comes from hone.llamacpp.gguf (a base converted once into the hone
home; a run exported with `hone export` on its first request, ~30-60 s on 2 cores). What a request runs on:

    model                          served as                                   exported on first request
    base model                     its GGUF                                    (converted once, hone home)
    LoRA run (plain LoRA)          the base's GGUF + the run's adapter GGUF,   --format gguf-lora (adapter)
                                   applied per request (--llamacpp-lora
                                   merged: the run's own merged GGUF)
    LoRA run, converter missing    the run's own merged GGUF                   --format gguf
    DoRA, QLoRA, IA3 runs          the run's own merged GGUF (llama.cpp's      --format gguf
                                   adapter GGUF holds a plain LoRA delta only;
                                   QLoRA's adapter was trained on a 4-bit base)
    full, freeze, BitFit runs      the run's own GGUF                          --format gguf
    prompt/prefix tuning,          refused (no GGUF): auto sends them to the transformers engine
    bottleneck adapters

So twenty LoRA runs over one base are one base in memory and twenty adapters of a few MB, not twenty
models. llama.cpp applies adapters to a whole context, so the child decodes the rows of one adapter per
step, rotating (hone/llamacpp/batch.py): many adapters share the memory, not the decode step.

Generation runs in a child process (hone/llamacpp/child.py) so that a crash or a kill of llama.cpp costs
the requests it was answering, each told so in one line, and nothing else: the next request starts a new
child. The child decodes up to 16 sequences of a model together (continuous batching: a request joins the
running batch between two steps, hone/llamacpp/batch.py). The parent keeps the OpenAI side: it sends the
model's HF token ids, and turns the ids that come back into streamed text, stop strings and usage counts
with generation.RowProgress, exactly as the transformers engine does. Each choice of a request is one
sequence, seeded with seed + its index.

Threads: `submit` queues a job; the prepare thread finds its GGUF (exporting it if need be) and sends it
to the child; the reader thread turns the child's messages into each job's events.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hone.errors import UserError
from hone.llamacpp.gguf import (
    LORA_MODES,
    QUANTS,
    base_gguf,
    exports_to_gguf,
    lora_applies,
    run_folder,
    run_gguf,
    run_lora_gguf,
)
from hone.serve.generation import Job, Row, RowProgress, eos_ids
from hone.serve.served import BASE, ModelTokenizers, tuned_artifact

log = logging.getLogger("hone.serve")


class EngineDied(UserError):
    """The engine's child process ended while it was answering."""


def can_serve(source) -> bool:
    """Whether llama.cpp can run `source`: a base model, or a run whose method exports to one GGUF."""
    if source.tuned is BASE:
        return True
    run = run_folder(source.tuned)
    return run is not None and exports_to_gguf(run)


@dataclass(frozen=True)
class Served:
    """What a model runs on in the child: a GGUF model, and a LoRA adapter GGUF applied over it (or None)."""
    model: Path
    adapter: Path | None = None


@dataclass
class InFlight:
    """A request the child is answering: its job, one Row per choice, and their progress."""
    job: Job
    rows: list[Row]
    progress: RowProgress
    cancelled: bool = False


class LlamaCppEngine(ModelTokenizers):
    """Answers Jobs through llama.cpp in a child process, many requests decoding together."""

    def __init__(self, threads: int | None = None, quant: str = "f16", default_max_tokens: int = 512,
                 lora: str = "adapter"):
        super().__init__()
        if quant not in QUANTS:
            raise UserError(f"--gguf-quant {quant}: the llamacpp engine serves {', '.join(QUANTS)}")
        if lora not in LORA_MODES:
            raise UserError(f"--llamacpp-lora {lora}: choose {' or '.join(LORA_MODES)}")
        self.quant, self.default_max_tokens, self.lora = quant, default_max_tokens, lora
        self._threads = threads
        self._ggufs: dict[str, Served] = {}    # tuned key or base spec -> what it runs on
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()          # starting threads and the child; sending to it
        self.process: subprocess.Popen | None = None
        self._conn: Any = None
        self._inflight: dict[int, InFlight] = {}
        self.calls = 0

    # -- what the router calls -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._prepare_forever, name="hone-llamacpp", daemon=True)
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
        with self._lock:
            self._stop_child()

    # -- the GGUF and the child ------------------------------------------------------------------
    def gguf(self, source) -> Served:
        """What `source` runs on (see the module's table), exported or converted on first use."""
        key = self._key(source) if source.tuned is not BASE else source.base
        if key not in self._ggufs:
            if source.tuned is BASE:
                self._ggufs[key] = Served(base_gguf(source.base, self.quant))
            else:
                run = run_folder(tuned_artifact(source.tuned))
                if run is None or not can_serve(source):
                    raise UserError(f"llama.cpp serves hone runs that export to one GGUF, and {source.tuned} is "
                                    "not one (prompt/prefix tuning, bottleneck adapters, or not a run folder); "
                                    "serve it with --engine transformers or auto")
                self._ggufs[key] = self._tuned(source, run)
        return self._ggufs[key]

    def _tuned(self, source, run: Path) -> Served:
        """A LoRA run as its adapter over the shared base GGUF; any other run (or a LoRA whose adapter
        export fails) as its own merged GGUF, with the reason logged."""
        why = lora_applies(run) if self.lora == "adapter" else "--llamacpp-lora merged"
        if why is None:
            try:
                return Served(base_gguf(self._base_spec(source), self.quant), run_lora_gguf(run, self.quant))
            except UserError as exc:
                why = f"its adapter could not be exported as GGUF ({exc})"
        (log.info if self.lora == "merged" else log.warning)("llama.cpp engine: %s is served as its own merged "
                                                             "GGUF: %s", run.name, why)
        return Served(run_gguf(run, self.quant))

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _child(self):
        """The connection to a running child, started (with its reader thread) if there is none."""
        if not self._alive():
            from hone.hardware import pick_threads

            self._stop_child()
            ours, theirs = socket.socketpair()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hone.llamacpp.child", str(theirs.fileno()), str(pick_threads(self._threads))],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            theirs.close()   # the child's end lives in the child only: its death reads as EOF here
            self._conn = Connection(ours.detach())
            threading.Thread(target=self._read_forever, args=(self._conn, self.process), name="hone-llamacpp-read",
                             daemon=True).start()
        return self._conn

    def _stop_child(self) -> None:
        if self._conn is not None:
            # shut down, not only closed: the reader thread blocked in recv() keeps a closed socket open
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            self._conn.close()   # the child reads EOF and returns
            self._conn = None
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _send(self, message: tuple) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.send(message)

    # -- the prepare thread: a job's GGUF, then to the child ---------------------------------------
    def _prepare_forever(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled:
                continue
            try:
                self._start(job)
            except OSError as exc:   # the child died as we sent: the reader fails what it was answering
                job.fail(EngineDied(f"the llama.cpp engine process died while answering ({exc}); it restarts "
                                    "with the next request"))
            except Exception as exc:  # noqa: BLE001 - reported to the request, the thread goes on
                job.fail(exc)

    def _start(self, job: Job) -> None:
        served = self.gguf(job.source)
        tokenizer = self.tokenizer(job.source)
        rows = [Row(job, p * job.n + j, prompt, job.max_tokens[p])
                for p, prompt in enumerate(job.prompts) for j in range(job.n)]
        progress = RowProgress(tokenizer, rows, eos_ids(None, tokenizer))
        s = job.sampling
        with self._lock:
            conn = self._child()
            self.calls += 1
            rid = self.calls
            self._inflight[rid] = InFlight(job, rows, progress)
            conn.send(("generate", {"id": rid, "model": str(served.model),
                                    "adapter": str(served.adapter) if served.adapter else None,
                                    "n_ctx": self.context_length(job.source) or 2048,
                                    "rows": [(row.prompt, row.limit) for row in rows], "temperature": s.temperature,
                                    "top_p": s.top_p, "seed": s.seed, "eos": sorted(progress.eos)}))

    # -- the reader thread: the child's messages to each job's events -------------------------------
    def _read_forever(self, conn, process: subprocess.Popen) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError, TypeError) as exc:   # TypeError: close() closed the connection under us
                self._child_died(conn, process, exc)
                return
            try:
                self._dispatch(message)
            except Exception:  # noqa: BLE001 - one request's event handler failing must not stop the others
                log.exception("llama.cpp engine: handling %s", message[0])

    def _dispatch(self, message: tuple) -> None:
        if message[0] == "step":
            for rid, index, token in message[1]:
                flight = self._inflight.get(rid)
                if flight is None:
                    continue
                row = flight.rows[index]
                if not row.done:
                    flight.progress.step(row, token)
                    if row.done and row.tokens < row.limit and token not in flight.progress.eos:
                        self._send(("cancel", rid, index))   # a stop string, or a client gone
                if flight.job.cancelled and not flight.cancelled:
                    flight.cancelled = True
                    self._send(("cancel", rid, -1))
            for rid, index in message[2]:
                flight = self._inflight.get(rid)
                if flight is not None and not flight.rows[index].done:
                    row = flight.rows[index]
                    flight.progress.end(row, flight.progress.text(row), "length")
        elif message[0] == "done":
            self._inflight.pop(message[1], None)
        elif message[0] == "error":
            flight = self._inflight.pop(message[1], None)
            if flight is not None:
                flight.job.fail(UserError(f"llama.cpp failed: {message[2]}"))

    def _child_died(self, conn, process: subprocess.Popen, exc: Exception) -> None:
        with self._lock:
            if self._conn is not conn:
                return   # closed on purpose (close(), or replaced after an earlier death)
            code = process.poll()
            self._stop_child()
            failed, self._inflight = self._inflight, {}
        if failed:
            log.error("the llama.cpp child process died (exit code %s): %s", code, exc)
        for flight in failed.values():
            flight.job.fail(EngineDied(f"the llama.cpp engine process died (exit code {code}) while answering; "
                                       "it restarts with the next request"))
