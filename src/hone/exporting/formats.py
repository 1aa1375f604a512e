"""Every export format in one table: what it writes, which runs it takes, how it is checked, how close it must be.

A format is a writer `(job, folder) -> files` and a verifier `(job, folder) -> Verification`, plus the
quantizations it offers, each with its tolerance against the run's own model (max |Δlogit| on the first
generated positions, and the share of check prompts whose greedy answer must be identical). Measured
(field notes §7, and docs/export.md on the demo's tuned model): merged fp32 vs unmerged 1.2e-4; fp16
0.05-0.11; q8_0 1.9, each with the same greedy text. Tolerances marked "not measured" are guesses
waiting for a machine with llama.cpp built.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hone.errors import UserError
from hone.exporting import gguf, hf, ollama
from hone.exporting.job import ExportJob
from hone.exporting.verify import Verification
from hone.methods.registry import METHODS

# What a method leaves behind decides where it can go (every name in methods/registry.py is in one group).
MERGED = frozenset({"lora", "dora", "qlora", "ia3"})      # an adapter, merged in fp32 into the base
WHOLE = frozenset({"full", "freeze", "bitfit"})           # the model's own weights changed
VIRTUAL = frozenset({"prompt_tuning", "prefix_tuning"})   # virtual tokens or prefixes: nothing to merge
HOOKED = frozenset({"adapters"})                          # bottleneck MLPs hooked after each block's MLP
HEAD = frozenset({"probe"})                               # a classification head on a frozen model
MODEL = MERGED | WHOLE                                    # becomes a plain model of the base's architecture


@dataclass(frozen=True)
class Quant:
    name: str
    max_logit_delta: float          # tolerance against the run's own model
    greedy_share: float = 1.0       # share of check prompts whose greedy answer must be identical
    tool: str = "torch"             # what writes it: torch, converter (llama.cpp's Python), llamacpp (compiled)
    merged_ok: bool = True          # False: refused for a merged adapter delta (bf16 keeps 36% of a LoRA delta)


@dataclass(frozen=True)
class Format:
    name: str
    what: str                                             # one line, for --help and errors
    quants: tuple[Quant, ...]                             # the first is the default
    methods: frozenset[str]                               # methods whose runs it exports
    write: Callable[[ExportJob, Path], list]            # -> the files written, the main one first
    verify: Callable[[ExportJob, Path], Verification]
    runtime: str                                          # what runs it, for the docs and the table

    def quant(self, name: str | None) -> Quant:
        if name is None:
            return self.quants[0]
        for quant in self.quants:
            if quant.name == name.lower():
                return quant
        raise UserError(f"unknown quant {name!r} for --format {self.name}; choose one of "
                        f"{', '.join(q.name for q in self.quants)}")


GGUF_QUANTS = (
    Quant("q8_0", 3.0, tool="converter"),
    Quant("f16", 0.5, tool="converter"),
    Quant("f32", 1e-3, tool="converter"),
    Quant("bf16", 3.0, tool="converter", merged_ok=False),
    Quant("q5_k_m", 6.0, 0.5, tool="llamacpp"),        # not measured
    Quant("q4_k_m", 8.0, 0.5, tool="llamacpp"),        # not measured
)

_FORMATS = [
    Format("hf", "a transformers model folder (safetensors, tokenizer, chat template, generation config)",
           (Quant("fp32", 1e-3), Quant("fp16", 0.5), Quant("bf16", 3.0, merged_ok=False)),
           MODEL | VIRTUAL, hf.write_hf, hf.verify_hf, "transformers, vLLM"),
    Format("peft", "the adapter alone, as training saved it, with a model card",
           (Quant("fp32", 1e-3),), frozenset(m for m, spec in METHODS.items() if spec.saves == "peft") | HOOKED,
           hf.write_peft, hf.verify_peft, "peft on the base model"),
    Format("gguf", "one GGUF file for llama.cpp", GGUF_QUANTS, MODEL, gguf.write_gguf, gguf.verify_gguf,
           "llama.cpp"),
    Format("ollama", "a GGUF with a Modelfile whose TEMPLATE and stop tokens match the training chat template",
           GGUF_QUANTS, MODEL, ollama.write_ollama, ollama.verify_ollama, "Ollama"),
    Format("gguf-lora", "the LoRA adapter as a llama.cpp adapter GGUF, with the base model as GGUF",
           # f32: the adapter applied unmerged by llama.cpp against the run's fp32 merged model, 0.0123 measured on
           # a tiny Llama with 10x weights (tests/test_llamacpp_lora.py); merged f32 GGUFs there: 0.
           (Quant("f16", 0.5, tool="llamacpp"), Quant("f32", 0.05, tool="llamacpp"),
            Quant("q8_0", 3.0, tool="llamacpp")),
           frozenset({"lora"}), gguf.write_gguf_lora, gguf.verify_gguf_lora, "llama.cpp --lora"),
]
FORMATS: dict[str, Format] = {f.name: f for f in _FORMATS}


def pick_format(name: str, quant: str | None) -> tuple[Format, Quant]:
    """The format and quant asked for, or a one-line error listing what exists."""
    fmt = FORMATS.get(name.lower())
    if fmt is None:
        raise UserError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return fmt, fmt.quant(quant)


def why_not(fmt: Format, quant: Quant, method: str, head: str | None = None) -> str | None:
    """Why a run trained with `method` cannot be exported as `fmt`/`quant` (one line), or None when it can."""
    if head:
        return (f"a run with a {head} head answers with labels or tags, not generated text, and hone export "
                "takes runs that generate; its adapter/ folder is what `hone chat`, `hone generate` and "
                "`hone serve` load")
    if method in VIRTUAL and method not in fmt.methods:
        return (f"{method} learns virtual tokens fed in front of every prompt; they cannot be merged into the "
                f"weights and {fmt.runtime} has no place for them: export --format hf (the base model with the "
                "virtual tokens beside it, for transformers + peft) or --format peft")
    if method in HOOKED and method not in fmt.methods:
        return ("bottleneck adapters are small MLPs hooked after each block's MLP; they are not linear, so they "
                f"cannot be merged, and {fmt.runtime} has no place for them: export --format peft (loaded by "
                "hone), or train with lora to export anywhere")
    if method in WHOLE and fmt.name == "peft":
        return f"{method} changed the model's own weights, so there is no adapter: export --format hf, gguf or ollama"
    if fmt.name == "gguf-lora" and method not in fmt.methods:
        return (f"gguf-lora is llama.cpp's LoRA adapter format and a {method} run is not a LoRA: export "
                "--format gguf (the merged model) instead")
    if method not in fmt.methods:
        return f"--format {fmt.name} does not take {method} runs; it takes {', '.join(sorted(fmt.methods))}"
    if method in MERGED and not quant.merged_ok:
        return (f"{quant.name} keeps a merged {method} delta with relative error 0.64 (fp16: 0.09; docs/export.md), "
                "most of what training changed; choose " + ", ".join(q.name for q in fmt.quants if q.merged_ok))
    return None
