"""The FastAPI app and `hone serve`: routers, request logs, error envelope, the workers it starts.

Each request logs one JSON line on stderr (method, path, status, ms, org; never the key). Every
response carries `x-request-id`, which the openai client exposes as `request_id`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from hone.serve import db, extensions, feedback, files, jobs
from hone.serve.auth import RateLimiter, current_org
from hone.serve.capture import CaptureWriter
from hone.serve.catalog import DatabaseCatalog
from hone.serve.dashboard import mount_dashboard
from hone.serve.errors import install_error_handlers, install_openapi
from hone.serve.settings import ServeSettings

log = logging.getLogger("hone.serve.requests")


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The service as an ASGI app (`uvicorn` runs it; tests can call it in-process)."""
    settings = settings or ServeSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine = getattr(app.state, "engine", None)  # the inference engine (part B), when mounted
        if engine is not None and hasattr(engine, "close"):
            engine.close()
        if app.state.capture is not None:
            app.state.capture.close()   # the queued captures are written before the server exits

    app = FastAPI(title="hone serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible fine-tuning and inference, self-hosted. Authenticate with "
                  "'Authorization: Bearer KEY' (hone keys create --org NAME).")
    app.state.settings = settings
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.catalog = DatabaseCatalog(settings)
    # captured traffic (`--capture`); the feedback endpoint answers either way (404: nothing captured)
    app.state.capture = CaptureWriter(settings) if settings.capture else None
    if app.state.capture is not None:
        app.state.capture.start()   # retention applies from the start, traffic or not
    db.session(settings.db).close()  # create the tables (and fail early on a bad --db)
    install_error_handlers(app)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(feedback.router)
    app.include_router(extensions.router)   # /v1/hone: what the dashboard needs beyond OpenAI's API
    try:  # part B: /v1/models, /v1/chat/completions, /v1/completions
        from hone.serve.inference import make_inference_router
    except ImportError:
        pass
    else:
        from hone.serve.engines.table import EngineRouter

        engine = EngineRouter(settings)
        router = make_inference_router(app.state.catalog, current_org, engine, settings.max_request_tokens,
                                       settings.knowledge_bases, app.state.capture)
        app.state.engine = getattr(router, "engine", None)
        app.include_router(router)

    @app.middleware("http")
    async def request_log(request: Request, call_next):
        started = time.perf_counter()
        request_id = "req_" + uuid.uuid4().hex[:24]
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = request_id
            return response
        finally:
            log.info(json.dumps({"time": round(time.time(), 3), "request_id": request_id,
                                 "method": request.method, "path": request.url.path, "status": status,
                                 "ms": round((time.perf_counter() - started) * 1000, 1),
                                 "org": getattr(request.state, "org", None)}))

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    mount_dashboard(app)
    install_openapi(app)

    return app


def start_workers(n: int, settings: ServeSettings) -> list[subprocess.Popen]:
    """`hone worker` processes sharing the server's database and settings."""
    env = {**os.environ, **settings.to_env()}
    return [subprocess.Popen([sys.executable, "-m", "hone.cli", "worker"], env=env, preexec_fn=_die_with_parent)
            for _ in range(n)]


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when the server dies, however it dies (uvicorn re-raises the
    signal that stopped it, so a `finally` in the server does not always run)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_workers(workers: list[subprocess.Popen], wait: float = 60.0) -> None:
    """SIGTERM: each worker interrupts its training (a checkpoint is saved) and puts its job back in the queue."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()  # its lease runs out and another worker resumes the job


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the API until interrupted, with `workers` job workers beside it."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app = create_app(settings)
    procs = start_workers(workers, settings)
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
    finally:
        stop_workers(procs)
