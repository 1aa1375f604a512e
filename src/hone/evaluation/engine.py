"""Which engine generates evaluation answers: transformers on the loaded model, or llama.cpp on a GGUF.

`auto` (the default of `hone eval --engine` and of `eval.engine`) is transformers: measured on the demo's
test set (120 items, batch 32, 1 thread, the shared 2-core machine), llama.cpp's batched f16 evaluation took
200.4 s against transformers' 223.8 s in one pair of runs and 206.1 s against 198.7 s in another (its own
KV cells per row and shared-prefix reuse by then): no reliable gain, since a batch of 32 is already
compute-bound in transformers' fp32, while 6-8 answers of 120 differed (docs/decisions.md). `llamacpp`
(where `make llamacpp` installed it) generates from the model's f16 GGUF: a base model converted once into
the hone home, a run whose method exports to one GGUF exported with `hone export` on first use, sft's
freshly tuned model merged and converted to a temporary GGUF. Perplexity is computed by transformers either
way (llama.cpp gives no per-token log-probabilities through this path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hone import llamacpp
from hone.errors import ConfigError, UserError

ENGINES = ("auto", "transformers", "llamacpp")
QUANT = "f16"   # closest to fp32: llama.cpp computes in f32 from f16 weights (field notes §7: max |Δlogit| 0.05)


@dataclass
class Generation:
    """How one model's answers are generated: `gguf` is None for transformers."""
    engine: str
    gguf: Path | None = None
    threads: int = 1

    def describe(self) -> str:
        return f"llama.cpp ({self.gguf.name})" if self.gguf else "transformers"


def check_engine(choice: str, where: str = "--engine") -> str:
    """`choice` when it can run here; else a one-line refusal naming `where`."""
    if choice not in ENGINES:
        raise ConfigError(f"{where} {choice}: choose one of {', '.join(ENGINES)}", field="engine")
    if choice == "llamacpp" and not llamacpp.installed():
        raise ConfigError(f"{where} llamacpp: llama.cpp is not installed: make llamacpp", field="engine")
    return choice


def wants_llamacpp(choice: str, device: str, model) -> bool:
    """Whether `choice` means llama.cpp for `model` here; auto does not (measured no faster, module doc)."""
    check_engine(choice)
    return choice == "llamacpp"


def pick_generation(choice: str, name: str, run_dir: Path | None, model, device: str, threads: int,
                    console) -> Generation:
    """The engine for the model `name` (a run when `run_dir` is given; `model` is it, loaded); auto says in
    one line when a model has no GGUF and transformers answers instead."""
    if not wants_llamacpp(choice, device, model):
        return Generation("transformers")
    from hone.llamacpp.gguf import base_gguf, exports_to_gguf, run_gguf

    try:
        if run_dir is None:
            return Generation("llamacpp", base_gguf(name, QUANT), threads)
        if not exports_to_gguf(run_dir):
            raise UserError(f"{run_dir.name}'s method has no GGUF (prompt/prefix tuning, bottleneck adapters)")
        return Generation("llamacpp", run_gguf(run_dir, QUANT), threads)
    except UserError as exc:
        if choice == "llamacpp":
            raise UserError(f"--engine llamacpp: {exc}") from None
        console.print(f"  generation: transformers (llama.cpp cannot run it: {exc})", highlight=False)
        return Generation("transformers")


def model_generation(choice: str, model, tokenizer, folder: Path, device: str, threads: int, console) -> Generation:
    """The engine for a model held in memory (a recipe's freshly tuned model): llama.cpp converts it to an f16
    GGUF at `folder/model.f16.gguf` first (~10 s on 2 cores); a model with virtual tokens has no GGUF."""
    if not wants_llamacpp(choice, device, model):
        return Generation("transformers")
    if hasattr(model, "peft_config"):   # prompt/prefix tuning: the base alone would answer, wrongly
        if choice == "llamacpp":
            raise UserError("eval.engine llamacpp: this method (virtual tokens) has no GGUF; use auto or transformers")
        return Generation("transformers")
    from hone.exporting.gguf import convert_model, tool_missing

    if missing := tool_missing("converter"):
        if choice == "llamacpp":
            raise UserError(missing)
        console.print(f"  generation: transformers ({missing})", highlight=False)
        return Generation("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    target = folder / f"model.{QUANT}.gguf"
    convert_model(folder / "hf", target, QUANT, "tuned", console)
    return Generation("llamacpp", target, threads)
