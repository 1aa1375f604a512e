"""The service's settings: one dataclass, filled from `hone serve` / `hone worker` options or HONE_SERVE_*.

Workers started by `hone serve` get the same settings through the environment, so a job trains the
same way whichever process picks it up.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from hone.errors import ConfigError
from hone.models.catalogue import CATALOGUE


@dataclass
class ServeSettings:
    db: str | None = None                    # SQLAlchemy URL; None: SQLite under the hone home
    max_upload_mb: float = 512.0             # OpenAI's per-file limit
    rate_limit: float = 600.0                # requests per minute per key (token bucket); 0 turns it off
    # Base models offered to clients, name -> spec resolve_model() accepts (catalogue name or folder).
    base_models: dict[str, str] = field(default_factory=lambda: {
        name: name for name, entry in CATALOGUE.items() if entry.kind == "causal-lm"})
    method: str = "lora"                     # how jobs adapt the model (hone's default method)
    max_steps: int | None = None             # cap on a job's optimizer steps (tests, quick trials)
    time_budget: float | None = None         # cap on a job's training seconds
    save_every: int | None = None            # checkpoint every N steps (default: once per epoch)
    early_stopping: bool = True              # False: jobs train to their epochs (or caps) whatever validation says
    lease_seconds: float = 30.0              # a worker silent this long has died: its job is resumed elsewhere
    min_examples: int = 10                   # OpenAI's minimum training examples
    # Inference engine (serve/engine.py): tuned models kept loaded (LRU), requests batched per forward
    # pass, how long a request waits for others to join its batch, threads (None: picked from the load).
    engine: str = "auto"                     # serve/engines/table.py: auto, transformers, llamacpp
    model_engines: dict[str, str] = field(default_factory=dict)   # base model name -> engine, over `engine`
    continuous_batching: bool = True         # False: today's window batching (one generate() at a time)
    # transformers engine: the weights' dtype, auto (per case and device, serve/engines/weights.py), fp32,
    # bf16, fp16; a case that refuses the dtype (a merged adapter in bf16) fails its requests in one line.
    weights: str = "auto"
    # The GGUF llama.cpp serves: f16 answered as transformers' fp32 did on the embedded model, q8_0 did not
    # ("The capital of France is Paris." against "L'Étoile, la Cité, ..."; docs/serve_inference.md).
    gguf_quant: str = "f16"
    # How the llamacpp engine serves a LoRA run: "adapter" (its gguf-lora over the shared base: one base in memory
    # for any number of runs) or "merged" (its own merged GGUF: one adapter alone ran 1.5x faster, one whole
    # model in memory per run; benchmarks/README.md, many_adapters.py).
    llamacpp_lora: str = "adapter"
    # vLLM engine (serve/engines/vllm.py): parallelism across GPUs (and nodes, through a Ray cluster) and any
    # further `vllm serve` arguments, passed through as given.
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    vllm_args: tuple[str, ...] = ()
    max_loaded_models: int = 4
    max_batch: int = 8
    batch_window_ms: float = 5.0
    inference_threads: int | None = None
    # Prompt plus completion tokens one inference request may ask for: n x the sum over its prompts of
    # (prompt tokens + max_tokens), what its rows hold in memory. 10,000 prompts in one request once
    # ran 104 s and took ~11 GB; 32768 is 64 prompts at the 512-token default answer. 0 turns it off.
    max_request_tokens: int = 32768
    # Knowledge bases a chat request may name in `hone_kb` (docs/knowledge.md): only those the operator
    # offers, as with base models, since every org's key reaches the server's hone home.
    knowledge_bases: tuple[str, ...] = ()
    # Capture (docs/production.md): requests and answers stored in the service database for `hone monitor`,
    # feedback and `hone data from-traffic`. Off by default; when on, of tuned models only unless
    # capture_models names others, of every org unless capture_orgs names some.
    capture: bool = False
    capture_raw: bool = False                # store text unredacted (default: e-mails, phones, cards... replaced)
    capture_raw_orgs: tuple[str, ...] = ()   # store these orgs' text unredacted (the orgs that asked for it)
    capture_days: float = 30.0               # retention: captures older than this are deleted
    capture_models: tuple[str, ...] = ()     # only these models (as clients name them, or served ids)
    capture_orgs: tuple[str, ...] = ()       # only these orgs
    # Captures waiting for the writer thread; past this, new ones are dropped and counted (never an answer
    # held back). Each waiting capture holds its request's text in memory.
    capture_queue: int = 10000
    # Registered models (the run registry's names) offered to one org each, name -> org: that org's requests
    # may name NAME@TAG or NAME:VERSION, resolved per request, so moving a tag (hone promote) changes what is
    # served without a restart. Only those the operator offers: every org's key reaches the server's home.
    registry_models: dict[str, str] = field(default_factory=dict)

    def raw_for(self, org: str) -> bool:
        """Whether `org`'s captured text and corrections are stored unredacted."""
        return self.capture_raw or org in self.capture_raw_orgs

    def __post_init__(self) -> None:
        options = (("--capture-raw", self.capture_raw), ("--capture-raw-org", self.capture_raw_orgs),
                   ("--capture-model", self.capture_models), ("--capture-org", self.capture_orgs))
        given = [name for name, on in options if on]
        if given and not self.capture:
            raise ConfigError(f"{given[0]} applies to captured traffic: add --capture (HONE_SERVE_CAPTURE=1)",
                              field="capture")
        from hone.serve.engines.weights import check_weights

        check_weights(self.weights)
        if self.capture_days <= 0 or self.capture_queue < 1:
            raise ConfigError("--capture-days must be above 0 and the capture queue at least 1", field="capture_days")

    @classmethod
    def from_env(cls, **given) -> "ServeSettings":
        """Defaults, overridden by HONE_SERVE_* variables, overridden by `given` (non-None values)."""
        env = os.environ
        values: dict = {}
        readers = {"max_upload_mb": float, "rate_limit": float, "method": str, "max_steps": int,
                   "time_budget": float, "save_every": int, "lease_seconds": float, "min_examples": int,
                   "max_loaded_models": int, "max_batch": int, "batch_window_ms": float, "inference_threads": int,
                   "max_request_tokens": int, "engine": str, "gguf_quant": str, "weights": str, "tensor_parallel": int,
                   "pipeline_parallel": int, "capture_days": float, "capture_queue": int, "llamacpp_lora": str}
        for name, read in readers.items():
            raw = env.get(f"HONE_SERVE_{name.upper()}")
            if raw:
                try:
                    values[name] = read(raw)
                except ValueError:
                    raise ConfigError(f"HONE_SERVE_{name.upper()}={raw!r} is not a {read.__name__}") from None
        if env.get("HONE_DB"):
            values["db"] = env["HONE_DB"]
        for switch in ("continuous_batching", "early_stopping"):
            if env.get(f"HONE_SERVE_{switch.upper()}"):
                values[switch] = env[f"HONE_SERVE_{switch.upper()}"] not in ("0", "false", "no")
        for flag in ("capture", "capture_raw"):
            if env.get(f"HONE_SERVE_{flag.upper()}"):
                values[flag] = env[f"HONE_SERVE_{flag.upper()}"] not in ("0", "false", "no")
        for many in ("capture_models", "capture_orgs", "capture_raw_orgs"):
            if env.get(f"HONE_SERVE_{many.upper()}"):
                values[many] = tuple(n.strip() for n in env[f"HONE_SERVE_{many.upper()}"].split(",") if n.strip())
        if env.get("HONE_SERVE_MODEL_ENGINES"):
            values["model_engines"] = parse_pairs(env["HONE_SERVE_MODEL_ENGINES"].split(","), "--model-engine")
        if env.get("HONE_SERVE_MODELS"):
            values["base_models"] = parse_models(env["HONE_SERVE_MODELS"].split(","))
        if env.get("HONE_SERVE_VLLM_ARGS"):
            values["vllm_args"] = tuple(shlex.split(env["HONE_SERVE_VLLM_ARGS"]))
        if env.get("HONE_SERVE_REGISTRY_MODELS"):
            values["registry_models"] = parse_pairs(env["HONE_SERVE_REGISTRY_MODELS"].split(","), "--registry-model")
        if env.get("HONE_SERVE_KB"):
            values["knowledge_bases"] = tuple(n.strip() for n in env["HONE_SERVE_KB"].split(",") if n.strip())
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` in a child process give these settings back."""
        env = {"HONE_SERVE_MODELS": ",".join(f"{k}={v}" for k, v in self.base_models.items())}
        if self.db:
            env["HONE_DB"] = self.db
        for name in ("max_upload_mb", "rate_limit", "method", "max_steps", "time_budget", "save_every",
                     "lease_seconds", "min_examples", "max_loaded_models", "max_batch", "batch_window_ms",
                     "inference_threads", "max_request_tokens", "engine", "gguf_quant", "weights", "tensor_parallel",
                     "pipeline_parallel", "capture_days", "capture_queue", "llamacpp_lora"):
            value = getattr(self, name)
            if value is not None:
                env[f"HONE_SERVE_{name.upper()}"] = str(value)
        env["HONE_SERVE_CONTINUOUS_BATCHING"] = "1" if self.continuous_batching else "0"
        env["HONE_SERVE_EARLY_STOPPING"] = "1" if self.early_stopping else "0"
        if self.vllm_args:
            env["HONE_SERVE_VLLM_ARGS"] = shlex.join(self.vllm_args)
        env["HONE_SERVE_CAPTURE"] = "1" if self.capture else "0"
        env["HONE_SERVE_CAPTURE_RAW"] = "1" if self.capture_raw else "0"
        for many in ("capture_models", "capture_orgs", "capture_raw_orgs"):
            if getattr(self, many):
                env[f"HONE_SERVE_{many.upper()}"] = ",".join(getattr(self, many))
        if self.knowledge_bases:
            env["HONE_SERVE_KB"] = ",".join(self.knowledge_bases)
        if self.registry_models:
            env["HONE_SERVE_REGISTRY_MODELS"] = ",".join(f"{k}={v}" for k, v in self.registry_models.items())
        if self.model_engines:
            env["HONE_SERVE_MODEL_ENGINES"] = ",".join(f"{k}={v}" for k, v in self.model_engines.items())
        return env


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    """['tiny=llamacpp'] -> {'tiny': 'llamacpp'}; both sides required."""
    pairs = {}
    for item in items:
        name, _, value = item.strip().partition("=")
        if not name.strip() or not value.strip():
            raise ConfigError(f"{option} {item!r}: expected NAME=VALUE", field=option.lstrip("-").replace("-", "_"))
        pairs[name.strip()] = value.strip()
    return pairs


def parse_models(items: list[str]) -> dict[str, str]:
    """['tiny=/models/tiny', 'smollm2-135m-instruct'] -> {'tiny': '/models/tiny', 'smollm2-...': 'smollm2-...'}."""
    models = {}
    for item in items:
        name, _, spec = item.strip().partition("=")
        name, spec = name.strip(), (spec.strip() or name.strip())
        if not name or ":" in name or "/" in name:
            raise ConfigError(f"--base-model {item!r}: expected NAME or NAME=SPEC, NAME without ':' or '/'",
                              field="base_model")
        models[name] = spec
    return models
