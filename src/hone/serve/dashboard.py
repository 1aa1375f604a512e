"""The web dashboard: a page at `/` and its files at /dashboard/, shipped in the wheel (serve/static/).

No build step and nothing fetched from elsewhere at run time: plain HTML, CSS and JavaScript that call
the same /v1 API the openai client does (and hone's /v1/hone extensions). The page keeps the key in the
browser's sessionStorage and sends it as the Bearer header, never in a URL.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Only this origin's own files and API: a vendored or injected script from elsewhere cannot run.
POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
          "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def mount_dashboard(app: FastAPI) -> None:
    """`/` serves the page; /dashboard/NAME its scripts and styles (starlette refuses paths outside STATIC)."""
    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"content-security-policy": POLICY, "cache-control": "no-cache",
                                     "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"})
