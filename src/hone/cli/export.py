"""`hone export`: a finished run in a runtime's format, verified against the run's own model (hone.export)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def export_command(
    run: str = typer.Argument(..., help="Run folder, run id, NAME:VERSION, NAME@TAG or 'latest'"),
    format: str = typer.Option("gguf", "--format", "-f", help="hf (safetensors), peft (the adapter), gguf (llama.cpp), ollama (GGUF + Modelfile) or gguf-lora (llama.cpp adapter)"),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="hf: fp32 (default), fp16; gguf/ollama: q8_0 (default), f16, f32, bf16, q4_k_m, q5_k_m; gguf-lora: f16, f32, q8_0"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write (default RUN/exports/FORMAT-QUANT)"),
    force: bool = typer.Option(False, "--force", help="Replace an existing, non-empty output folder"),
    prompts: int = typer.Option(8, "--prompts", min=1, help="Prompts from the run's test split to verify the export on"),
    as_json: bool = typer.Option(False, "--json", help="Print export.json (with the folder) as JSON on the last line"),
):
    """Export a tuned run for llama.cpp, Ollama, vLLM or transformers; the artifact is loaded back and must answer like the run before it is put in place."""
    import hone

    result = hone.export(run, format, quant, output, force=force, prompts=prompts, console=err)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    out.print(str(result.folder), highlight=False)
    if result.format == "ollama":
        err.print(f"[dim]run it: cd {result.folder} && ollama create {result.run.name.lower()} -f Modelfile[/dim]",
                  highlight=False)
