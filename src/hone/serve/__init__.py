"""`hone serve`: a self-hosted, OpenAI-compatible fine-tuning and inference service (docs/serve.md).

    app.py      the FastAPI app: mounts the routers, request logs, error handlers
    errors.py   OpenAI-shaped error bodies (`{"error": {message, type, param, code}}`), the schema's statuses
    body.py     JSON bodies must be Unicode text (no lone surrogates): a 400, not a 500 downstream
    auth.py     API keys (sha256-hashed) -> org; the per-key rate limit
    db.py       the service's tables (SQLite under the hone home, or any SQLAlchemy URL)
    files.py    /v1/files: upload (validated), list, retrieve, delete, content
    jobs.py     /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints
    worker.py   `hone worker`: claims queued jobs, trains them, resumes a dead worker's job
    heartbeat.py a running job's lease, progress and the pause/cancel it is asked for
    catalog.py  base and tuned models an org may see
    inference.py /v1/chat/completions, /v1/completions, /v1/models: the OpenAI surface over an engine
    served.py   what a served model is for every engine: base or tuned folder, tokenizers, context lengths
    engine.py   the transformers engine; engines/ the table of engines (llama.cpp, vLLM), batching, weights
    generation.py, tools.py  decoding rows into streamed text, stop strings, usage; tool calls and schemas
    capture.py  `--capture`: served exchanges stored off the request path (monitor/ reads them)
    feedback.py POST /v1/feedback: ratings and corrections of captured answers
    extensions/ /v1/hone: hone's own endpoints, one module per dashboard section
    dashboard.py, static/  the web dashboard served at /
"""
