"""The serving engines: one table, ENGINES, that `hone serve --engine`, the per-model setting
(`--model-engine NAME=ENGINE`), the one-line refusals, the docs and the tests all derive from.

Every engine answers the same Jobs (serve/generation.py) in the model's own HF tokenizer's ids, so the
OpenAI surface (prompts, streaming, stop strings, usage counts, n) is one code path whichever engine
generates; `EngineRouter` sends each model to its engine. `auto` picks, per model: llama.cpp on a CPU
machine where it is installed and the model is one it can run (a base model or a tuned model that
exports to GGUF), else transformers.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from hone.errors import ConfigError, UserError
from hone.serve.engine import Engine
from hone.serve.generation import Job
from hone.serve.served import BASE, ModelTokenizers
from hone.serve.settings import ServeSettings


class EngineNotInstalled(ConfigError):
    """`--engine` names an engine whose optional packages are not installed."""


@dataclass(frozen=True)
class EngineSpec:
    name: str
    what: str                            # one line, for --help and the docs
    installed: Callable[[], bool]
    install: str                         # the command that installs it, for the refusal
    lacks: str                           # what of the OpenAI surface it does not do ("" when nothing)
    build: Callable[[ServeSettings], object]


def _transformers(settings: ServeSettings) -> Engine:
    return Engine(max_tuned=settings.max_loaded_models, batch_window=settings.batch_window_ms / 1000,
                  max_batch=settings.max_batch, threads=settings.inference_threads,
                  continuous=settings.continuous_batching, weights=settings.weights)


def _llamacpp(settings: ServeSettings):
    from hone.serve.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(threads=settings.inference_threads, quant=settings.gguf_quant,
                          lora=settings.llamacpp_lora)


def _vllm(settings: ServeSettings):
    from hone.serve.engines.vllm import VllmEngine

    return VllmEngine(settings.tensor_parallel, settings.pipeline_parallel, tuple(settings.vllm_args))


def _vllm_installed() -> bool:
    from hone.serve.engines.vllm import installed

    return installed()


def _has(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


ENGINES: dict[str, EngineSpec] = {e.name: e for e in (
    EngineSpec("transformers", "HF transformers in this process: every tuning method, continuous batching, "
               "weights in fp32, bf16 or fp16 (--weights); the reference and the fallback", lambda: True, "", "",
               _transformers),
    EngineSpec("llamacpp", "llama.cpp (llama-cpp-python) in a child process on the GGUF `hone export` writes, "
               "exported on first use and cached; up to 16 sequences per model decode together", _has("llama_cpp"),
               "make llamacpp", "rows of different LoRA adapters take turns, one adapter per decode step "
               "(--llamacpp-lora merged: each run its own GGUF); prompt/prefix tuning and bottleneck adapters "
               "(no GGUF) go to transformers under --engine auto",
               _llamacpp),
    EngineSpec("vllm", "vLLM's OpenAI server as a child process (its own venv), one per base model; LoRA runs "
               "load into it as dynamic adapters; --tensor-parallel/--pipeline-parallel/--vllm-arg passed through",
               _vllm_installed, "make vllm (or set HONE_VLLM_PYTHON)",
               "LoRA adapters only (DoRA, IA3, prompt tuning, ... go to transformers); no schema-constrained "
               "requests (those go to transformers)", _vllm),
)}
CHOICES = ("auto", *ENGINES)


def check_engine(name: str, where: str | None = None) -> str:
    """`name` if it is an engine that can run here; 'auto' stays 'auto'. Else a one-line refusal naming
    the option (`where`, default `--engine NAME`)."""
    where = where or f"--engine {name}"
    if name == "auto":
        return name
    spec = ENGINES.get(name)
    if spec is None:
        raise ConfigError(f"{where}: unknown engine; choose one of {', '.join(CHOICES)}", field="engine")
    if not spec.installed():
        raise EngineNotInstalled(f"{where}: {name} is not installed: {spec.install}", field="engine")
    return name


def auto_engine() -> str:
    """The engine `auto` prefers on this machine: vLLM on a GPU machine, llama.cpp on a CPU machine, where
    installed; else transformers."""
    import torch

    if torch.cuda.is_available():
        return "vllm" if ENGINES["vllm"].installed() else "transformers"
    return "llamacpp" if ENGINES["llamacpp"].installed() else "transformers"


class EngineRouter(ModelTokenizers):
    """Every configured engine behind the one interface the inference router calls; each model's
    requests go to its engine (tuned models follow their base's setting)."""

    def __init__(self, settings: ServeSettings):
        super().__init__()
        self.settings = settings
        self.default = check_engine(settings.engine)
        self.per_base: dict[str, str] = {}
        for name, engine in settings.model_engines.items():
            if name not in settings.base_models:
                raise ConfigError(f"--model-engine {name}={engine}: no base model is named {name!r} "
                                  f"(offered: {', '.join(settings.base_models)})", field="model_engine")
            self.per_base[settings.base_models[name]] = check_engine(engine, f"--model-engine {name}={engine}")
        from hone.llamacpp.gguf import LORA_MODES, QUANTS

        if settings.gguf_quant not in QUANTS:
            raise ConfigError(f"--gguf-quant {settings.gguf_quant}: the llamacpp engine serves {', '.join(QUANTS)}",
                              field="gguf_quant")
        if settings.llamacpp_lora not in LORA_MODES:
            raise ConfigError(f"--llamacpp-lora {settings.llamacpp_lora}: choose {' or '.join(LORA_MODES)}",
                              field="llamacpp_lora")
        if (settings.tensor_parallel != 1 or settings.pipeline_parallel != 1 or settings.vllm_args) and \
                "vllm" not in (self.default, *self.per_base.values()) and not (self.default == "auto"
                                                                               and auto_engine() == "vllm"):
            raise ConfigError("--tensor-parallel, --pipeline-parallel and --vllm-arg apply only to the vllm engine: "
                              "add --engine vllm (or drop them)", field="engine")
        self.engines: dict[str, Any] = {}
        self.default_max_tokens = 512

    def engine_name(self, source) -> str:
        choice = self.per_base.get(source.base, self.default)
        if choice != "auto":
            return choice
        preferred = auto_engine()
        if preferred == "llamacpp":
            from hone.serve.engines.llamacpp import can_serve

            if not can_serve(source):
                return "transformers"
        if preferred == "vllm" and source.tuned is not BASE:
            from hone.serve.engines.vllm import serves_adapter

            if not serves_adapter(source):
                return "transformers"
        return preferred

    def engine(self, name: str):
        if name not in self.engines:
            self.engines[name] = ENGINES[name].build(self.settings)
        return self.engines[name]

    def submit(self, job: Job) -> None:
        try:
            # A schema (tool_choice required/named, response_format json_schema) is applied by the transformers
            # engine's logits processor (serve/tools.py); llama.cpp's child process takes no grammar from hone.
            engine = self.engine("transformers" if job.schema else self.engine_name(job.source))
        except UserError as exc:
            job.fail(exc)
            return
        engine.submit(job)

    def unload(self, source) -> None:
        if source.tuned is not BASE:
            for engine in self.engines.values():
                engine.unload(source)

    def loaded(self) -> list[str]:
        return [key for engine in self.engines.values() for key in engine.loaded()]

    @property
    def calls(self) -> int:
        return sum(getattr(engine, "calls", 0) for engine in self.engines.values())

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
