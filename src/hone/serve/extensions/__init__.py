"""hone's extensions to the OpenAI API, under /v1/hone: what the dashboard needs and OpenAI has no call for.

Each one is a library function behind a key, scoped to the key's org like every /v1 operation:
- POST /v1/hone/data/check: the full quality report of a file (`hone data check`), stored nowhere, so a
  file the upload refuses still shows every problem by line and field.
- GET  /v1/hone/files/{id}/advice: the advised recipe with its reasons (`hone plan --data`) and the memory
  and time plan of the server's method (`hone plan`).
- GET  /v1/hone/fine_tuning/jobs/{id}/stream: the job's events as server-sent events, oldest first, then
  each new one as it is written, ending when the job ends (`after` resumes a dropped stream).
- POST /v1/hone/fine_tuning/jobs/{id}/evaluation: tuned against base on held-out data with paired
  bootstrap intervals and the per-item outcome (`hone eval`).
- POST /v1/hone/fine_tuning/jobs/{id}/forgetting: the forgetting probe, base against tuned.
- GET  /v1/hone/runs, POST /v1/hone/runs/{id}/tags, GET /v1/hone/runs/diff: the registry's records of the
  org's jobs (`hone runs`), tags and diffs.
- GET  /v1/hone/traffic, GET /v1/hone/monitor: the models with captured traffic, and `hone monitor` of one with
  its rated answers (the Production section).
- POST /v1/hone/runs/{id}/promotion: promote to production through `hone promote`'s gate (or forced, saying
  which conditions failed).
- GET  /v1/hone/export_formats, POST /v1/hone/runs/{id}/exports: `hone export`, verified, with its table.

A module per section of the dashboard (serve/static/app.js): data.py (Data, Plan), watch.py, compare.py,
registry.py, production.py; paths.py keeps the server's folders out of every answer.
"""
from __future__ import annotations

from fastapi import APIRouter

from hone.serve.errors import error_responses
from hone.serve.extensions import compare, data, production, registry, watch

router = APIRouter()
for section in (data, watch, compare, registry, production):   # the order of their paths in the API's schema
    router.include_router(section.router, prefix="/v1/hone", tags=["hone extensions"], responses=error_responses(404))
