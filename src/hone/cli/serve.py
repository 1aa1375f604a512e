"""`hone serve`, `hone worker` and `hone keys`: the CLI side of hone.serve."""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
keys_app = typer.Typer(no_args_is_help=True, help="API keys for hone serve (each key belongs to one org).")

DB_HELP = "Service database URL (default: SQLite under the hone home; postgresql://... to share it)"


def _settings(db: str | None, base_models: list[str] | None = None, model_engines: list[str] | None = None,
              **given):
    from hone.serve.settings import ServeSettings, parse_models, parse_pairs

    models = parse_models(base_models) if base_models else None
    engines = parse_pairs(model_engines, "--model-engine") if model_engines else None
    return ServeSettings.from_env(db=db, base_models=models, model_engines=engines, **given)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback unless you mean otherwise)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help="Job workers to start beside the API (more: `hone worker`)"),
    base_model: Optional[List[str]] = typer.Option(None, "--base-model", help="Offer a base model: NAME or NAME=SPEC (folder or catalogue name); repeatable. Default: the catalogue's language models"),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Largest accepted upload (default 512)"),
    rate_limit: Optional[float] = typer.Option(None, "--rate-limit", help="Requests per minute per key (default 600; 0: no limit)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap every job at N optimizer steps"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Cap every job's training at N seconds"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (default once per epoch)"),
    no_early_stopping: bool = typer.Option(False, "--no-early-stopping", help="Jobs train to their epochs (or the caps above) even when validation loss stops improving (default: stop after 3 validations without a better one)"),
    lease_seconds: Optional[float] = typer.Option(None, "--lease-seconds", help="A silent worker's job is resumed elsewhere after this long (default 30)"),
    max_loaded_models: Optional[int] = typer.Option(None, "--max-loaded-models", min=1, help="Tuned models kept in memory for inference, least recently used dropped first (default 4)"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="Inference requests answered together in one forward pass (default 8)"),
    batch_window_ms: Optional[float] = typer.Option(None, "--batch-window-ms", min=0, help="How long a request waits for others to join its batch (default 5 ms)"),
    inference_threads: Optional[int] = typer.Option(None, "--inference-threads", min=1, help="CPU threads for inference (default: picked from cores and load)"),
    max_request_tokens: Optional[int] = typer.Option(None, "--max-request-tokens", min=0, help="Most tokens one inference request may ask for: n x the sum of (prompt + max_tokens) over its prompts (default 32768; 0: no cap)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="Inference engine: auto (vllm on a GPU, llamacpp on CPU, where installed; else transformers), transformers, llamacpp, vllm (default auto)"),
    model_engine: Optional[List[str]] = typer.Option(None, "--model-engine", help="The engine for one base model and its tuned models: NAME=ENGINE; repeatable"),
    window_batching: bool = typer.Option(False, "--window-batching", help="transformers engine: batch only requests arriving together, one generate() at a time (before continuous batching)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="transformers engine: the weights' dtype, auto (per model kind and device, measured: docs/serve_inference.md), fp32, bf16, fp16; bf16 is refused for merged adapters (default auto)"),
    gguf_quant: Optional[str] = typer.Option(None, "--gguf-quant", help="llamacpp engine: the GGUF it serves, exported on first use: f16 (default), q8_0 (faster, answers drift), f32"),
    llamacpp_lora: Optional[str] = typer.Option(None, "--llamacpp-lora", help="llamacpp engine: a LoRA run as its adapter over the shared base (adapter, the default: one base in memory for any number of runs) or as its own merged GGUF (merged: ~1.5x the speed for one run, a whole model per run)"),
    tensor_parallel: Optional[int] = typer.Option(None, "--tensor-parallel", min=1, help="vllm engine: GPUs each model is split across (vLLM's --tensor-parallel-size; default 1)"),
    pipeline_parallel: Optional[int] = typer.Option(None, "--pipeline-parallel", min=1, help="vllm engine: pipeline stages, across nodes through a Ray cluster (vLLM's --pipeline-parallel-size; default 1)"),
    vllm_arg: Optional[List[str]] = typer.Option(None, "--vllm-arg", help="vllm engine: one more argument for `vllm serve`, passed as given (e.g. --vllm-arg=--gpu-memory-utilization=0.8); repeatable"),
    registry_model: Optional[List[str]] = typer.Option(None, "--registry-model", help="Offer a registered model to one org: NAME=ORG; that org may then ask for NAME@TAG (e.g. NAME@production, resolved per request: hone promote switches it without a restart) or NAME:VERSION; repeatable"),
    kb: Optional[List[str]] = typer.Option(None, "--kb", help="Offer a knowledge base (hone kb list) to chat requests' hone_kb field; repeatable. Default: none"),
    capture: bool = typer.Option(False, "--capture", help="Store requests and answers of tuned models in the service database (personal data redacted) for hone monitor, feedback and hone data from-traffic"),
    capture_raw: bool = typer.Option(False, "--capture-raw", help="With --capture: store every org's text unredacted"),
    capture_raw_org: Optional[List[str]] = typer.Option(None, "--capture-raw-org", help="With --capture: store this org's text unredacted (an org that asked for it); repeatable"),
    capture_days: Optional[float] = typer.Option(None, "--capture-days", help="With --capture: delete captures older than N days (default 30)"),
    capture_model: Optional[List[str]] = typer.Option(None, "--capture-model", help="With --capture: capture only this model (any model, base ones too); repeatable"),
    capture_org: Optional[List[str]] = typer.Option(None, "--capture-org", help="With --capture: capture only this org's traffic; repeatable"),
):
    """Run the OpenAI-compatible API (files, fine-tuning jobs, models, chat) with job workers."""
    from hone.serve.app import serve as run_server
    from hone.serve.engines.table import EngineRouter
    from hone.serve.settings import parse_pairs

    settings = _settings(db, base_model, model_engine, engine=engine, gguf_quant=gguf_quant,
                         llamacpp_lora=llamacpp_lora, weights=weights,
                         continuous_batching=False if window_batching else None, max_upload_mb=max_upload_mb, rate_limit=rate_limit, max_steps=max_steps,
                         time_budget=time_budget, save_every=save_every, lease_seconds=lease_seconds,
                         early_stopping=False if no_early_stopping else None,
                         max_loaded_models=max_loaded_models, max_batch=max_batch, batch_window_ms=batch_window_ms,
                         inference_threads=inference_threads, max_request_tokens=max_request_tokens,
                         knowledge_bases=tuple(kb) if kb else None, tensor_parallel=tensor_parallel,
                         pipeline_parallel=pipeline_parallel, vllm_args=tuple(vllm_arg) if vllm_arg else None,
                         capture=capture or None,
                         capture_raw=capture_raw or None, capture_days=capture_days,
                         capture_raw_orgs=tuple(capture_raw_org) if capture_raw_org else None,
                         capture_models=tuple(capture_model) if capture_model else None,
                         capture_orgs=tuple(capture_org) if capture_org else None,
                         registry_models=parse_pairs(registry_model, "--registry-model") if registry_model else None)
    if capture_days is not None and not settings.capture:
        from hone.errors import ConfigError

        raise ConfigError("--capture-days applies to captured traffic: add --capture", field="capture_days")
    EngineRouter(settings)   # a missing engine or an unknown model name: refused in one line before starting
    if settings.knowledge_bases:
        from hone.kb.store import find_kb

        for name in settings.knowledge_bases:
            find_kb(name)   # an unknown knowledge base: refused in one line before starting
    if settings.registry_models:
        from hone.registry.store import get_run

        for name in settings.registry_models:
            get_run(name)   # an unknown registered name: refused in one line before starting
    if host not in ("127.0.0.1", "localhost", "::1"):
        Console(stderr=True).print(f"[yellow]warning:[/yellow] listening on {host}: reachable from other machines; "
                                   "keys are sent in clear text unless a TLS proxy is in front", highlight=False)
    run_server(settings, host, port, workers)


def worker(
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    base_model: Optional[List[str]] = typer.Option(None, "--base-model", help="Base models (as for hone serve)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap every job at N optimizer steps"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Cap every job's training at N seconds"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (default once per epoch)"),
    no_early_stopping: bool = typer.Option(False, "--no-early-stopping", help="Jobs train to their epochs (or the caps above) even when validation loss stops improving (default: stop after 3 validations without a better one)"),
    lease_seconds: Optional[float] = typer.Option(None, "--lease-seconds", help="A job's lease in seconds (default 30); sweep trials keep hone sweep's (120 s without a heartbeat)"),
    sweeps: bool = typer.Option(False, "--sweeps", help="Also run trials of sweeps started with `hone sweep --workers`, one at a time, between jobs"),
):
    """Train queued fine-tuning jobs from the service database (run on any machine that shares it)."""
    from hone.serve.worker import Worker

    Worker(_settings(db, base_model, max_steps=max_steps, time_budget=time_budget, save_every=save_every,
                     early_stopping=False if no_early_stopping else None, lease_seconds=lease_seconds),
           sweeps=sweeps).run_forever()


@keys_app.command("create")
def keys_create(org: str = typer.Option(..., "--org", help="Organisation the key acts for"),
                db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)):
    """Make a key; prints the key alone (it is stored hashed and cannot be shown again)."""
    from hone.serve.auth import create_key

    print(create_key(org, _settings(db).db))


@keys_app.command("list")
def keys_list(db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
              as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """Keys with their org, first characters and state (never the secret)."""
    from hone.serve.auth import list_keys

    keys = list_keys(_settings(db).db)
    if as_json:
        print(json.dumps(keys))
        return
    table = Table("id", "org", "key", "created", "state")
    import time

    for k in keys:
        table.add_row(k["id"], k["org"], k["prefix"], time.strftime("%Y-%m-%d %H:%M", time.localtime(k["created_at"])),
                      "[red]revoked[/red]" if k["revoked"] else "active")
    out.print(table if keys else "no keys yet: hone keys create --org NAME")


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="Key id (key-..., from hone keys list) or the key itself"),
                db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)):
    """Revoke a key: requests with it get 401 from now on."""
    from hone.serve.auth import revoke_key

    done = revoke_key(key, _settings(db).db)
    out.print(f"revoked {done['id']} (org {done['org']})", highlight=False)
