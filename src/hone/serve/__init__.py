"""`hone serve`: a self-hosted, OpenAI-compatible fine-tuning and inference service (docs/serve.md).

    app.py      the FastAPI app: mounts the routers, request logs, error handlers
    errors.py   OpenAI-shaped error bodies (`{"error": {message, type, param, code}}`), the schema's statuses
    body.py     JSON bodies must be Unicode text (no lone surrogates): a 400, not a 500 downstream
    auth.py     API keys (sha256-hashed) -> org; the per-key rate limit
    db.py       the service's tables (SQLite under the hone home, or any SQLAlchemy URL)
    files.py    /v1/files: upload (validated), list, retrieve, delete, content
    jobs.py     /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints
    worker.py   `hone worker`: claims queued jobs, trains them, resumes a dead worker's job
    catalog.py  base and tuned models an org may see (inference.py, part B, serves them)
"""
