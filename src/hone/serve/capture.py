"""`hone serve --capture`: each answered request of a captured model stored for monitoring and retraining.

The request path only builds a plain record (hone.monitor.traffic's Exchange, the type `hone monitor` reads
back) and puts it on a bounded queue (`put_nowait`); a writer thread redacts personal data (hone.data.pii,
the detectors `hone data check` uses) and writes rows in batches to the service database. A full queue
drops the capture and counts it: an answer is never held back for its capture. The writer also deletes
captures past the retention limit, once at start and then hourly. benchmarks/capture_overhead.py measures
what capture costs an answer.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from hone.data.pii import redact
from hone.monitor import traffic
from hone.monitor.traffic import Exchange
from hone.serve.settings import ServeSettings

log = logging.getLogger("hone.serve.capture")
BATCH = 64                 # rows per commit: one SQLite commit per row would cost the writer most of its time
PURGE_EVERY_S = 3600.0     # retention is in days; an hourly sweep keeps the table within an hour of it


class CaptureWriter:
    """Decides what is captured (settings) and writes it from its own thread."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.queue: queue.Queue[Exchange | None] = queue.Queue(maxsize=settings.capture_queue)
        self.dropped = 0
        self.written = 0
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0
        traffic.session(settings.db).close()   # the tables exist (and a bad --db fails) before the first answer

    def wanted(self, org: str, model: str, served: str, tuned: bool) -> bool:
        """Whether this org's request to this model is captured."""
        if not self.settings.capture:
            return False
        if self.settings.capture_orgs and org not in self.settings.capture_orgs:
            return False
        if self.settings.capture_models:
            return model in self.settings.capture_models or served in self.settings.capture_models
        return tuned

    def submit(self, record: Exchange) -> None:
        """Queue a capture; never blocks: when the queue is full it is dropped and counted."""
        if self._thread is None:
            self.start()
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("capture queue full (%d waiting): %d capture(s) dropped so far",
                            self.settings.capture_queue, self.dropped)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hone-capture", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to `timeout`) until every queued capture is written: feedback may rate an answer the
        writer has not stored yet."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._purge_if_due()
            try:
                first = self.queue.get(timeout=60)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            try:
                if records:
                    self._write(records)
            except Exception:  # noqa: BLE001 - a database hiccup loses these captures, never the server
                log.exception("could not write %d capture(s)", len(records))
            finally:
                for _ in batch:
                    self.queue.task_done()
            if None in batch:
                return

    def _write(self, records: list[Exchange]) -> None:
        with traffic.session(self.settings.db) as s:
            for r in records:
                raw = self.settings.raw_for(r.org)
                kinds: list[str] = []
                messages = [dict(m, content=self._text(m.get("content"), raw, kinds)) for m in r.messages]
                answers = [dict(a, text=self._text(a.get("text"), raw, kinds)) for a in r.answers]
                s.add(traffic.Capture(id=r.id, org=r.org, model=r.model, served=r.served, run_dir=r.run_dir,
                                      kind=r.kind, created_at=r.created_at, messages=messages, answers=answers,
                                      latency_ms=r.latency_ms, prompt_tokens=r.prompt_tokens,
                                      completion_tokens=r.completion_tokens, max_tokens=r.max_tokens,
                                      redacted=sorted(set(kinds)), raw=int(raw)))
            s.commit()
        self.written += len(records)

    @staticmethod
    def _text(text, raw: bool, kinds: list[str]):
        if raw or not isinstance(text, str):
            return text
        clean, found = redact(text)
        kinds.extend(found)
        return clean

    def _purge_if_due(self) -> None:
        if time.monotonic() - self._last_purge < PURGE_EVERY_S and self._last_purge:
            return
        self._last_purge = time.monotonic()
        try:
            gone = traffic.purge_older_than(self.settings.capture_days, self.settings.db)
        except Exception:  # noqa: BLE001 - retention is retried at the next sweep
            log.exception("capture retention sweep failed")
            return
        if gone:
            log.info("capture retention: deleted %d capture(s) older than %g days", gone, self.settings.capture_days)
