"""The GGUF that llama.cpp runs for a model: a base converted once into the hone home, a run's export.

A base model is converted once by llama.cpp's converter into the hone home (`gguf/`); a tuned run is
exported with `hone export RUN --format gguf` on first use (verified against the run's own model, as every
export is) and found in the run's record afterwards (~30-60 s the first time on 2 cores, nothing later).
A LoRA run served per request is exported as `--format gguf-lora` instead (the adapter GGUF, a few MB,
applied over the base's GGUF: `lora_applies`, `run_lora_gguf`).
"""
from __future__ import annotations

from pathlib import Path

from hone.errors import UserError

QUANTS = ("f16", "q8_0", "f32")   # what llama.cpp's converter writes without the compiled quantizer
LORA_MODES = ("adapter", "merged")   # --llamacpp-lora: a LoRA run over the shared base, or its own merged GGUF


def run_folder(tuned: str | Path) -> Path | None:
    """The hone run a tuned model comes from (its folder holds run.json), or None."""
    path = Path(tuned)
    for folder in (path, path.parent):
        if (folder / "run.json").is_file():
            return folder
    return None


def exports_to_gguf(run: Path) -> bool:
    """Whether a run's method exports to one GGUF (not prompt/prefix tuning or bottleneck adapters)."""
    from hone.exporting.formats import MODEL
    from hone.exporting.run import trained_method
    from hone.registry.runs import read_record

    try:
        return trained_method(run, read_record(run)) in MODEL
    except UserError:
        return False


def base_gguf(spec: str, quant: str) -> Path:
    """The base model as GGUF in the hone home, converted once by llama.cpp's converter."""
    from rich.console import Console

    from hone.exporting.gguf import converted_base
    from hone.models.catalogue import resolve_model

    return converted_base(resolve_model(spec).path, quant, Console(stderr=True))


def lora_applies(run: Path) -> str | None:
    """Why the llama.cpp engine serves `run` merged rather than as an adapter over its base (one line), or None
    when its adapter applies per request: a plain LoRA (not DoRA, QLoRA or IA3, whose deltas llama.cpp's
    adapter format does not hold as trained) with llama.cpp's LoRA converter installed."""
    from hone.exporting.gguf import tool_missing
    from hone.exporting.run import trained_method
    from hone.registry.runs import read_record

    try:
        method = trained_method(run, read_record(run))
    except UserError as exc:
        return str(exc)
    if method != "lora":
        return f"a {method} run is served merged (llama.cpp applies plain LoRA adapters only)"
    return tool_missing("llamacpp")


def run_lora_gguf(run: Path, quant: str) -> Path:
    """The run's LoRA adapter as GGUF (`hone export RUN --format gguf-lora --quant QUANT`), made on first use."""
    return _exported(run, "gguf-lora", quant)


def run_gguf(run: Path, quant: str) -> Path:
    """The run's GGUF export (`hone export RUN --format gguf --quant QUANT`), made on first use."""
    return _exported(run, "gguf", quant)


def _exported(run: Path, fmt: str, quant: str) -> Path:
    """The main file of the run's `fmt` export at `quant`: the recorded one while its file exists, else a new one."""
    from rich.console import Console

    from hone.exporting.run import export_run
    from hone.registry.runs import read_record

    for entry in read_record(run).get("exports", []):
        path = Path(entry.get("path", "")) / entry.get("file", "")
        if entry.get("format") == fmt and entry.get("quant") == quant and path.is_file():
            return path
    result = export_run(run, fmt, quant, console=Console(stderr=True))
    return result.folder / result.manifest["main_files"][0]
