"""`hone plan`: memory and time of a training job for each method, before anything is loaded."""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def plan_command(
    model: str = typer.Argument("smollm2-135m-instruct", help="Catalogue name, local folder, or a size such as 7b or 360m"),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Plan only these methods (default: every causal-LM method)"),
    length: int = typer.Option(512, "--length", help="Tokens per sequence"),
    batch: int = typer.Option(8, "--batch", help="Sequences per optimizer step"),
    examples: int = typer.Option(1000, "--examples", help="Training examples per epoch"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a named GPU instead of this machine (h100, a100, l4, t4, ...)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the idle cores now)"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON"),
):
    """Estimate training memory and time per epoch for each method, and say which fit."""
    from hone.plan import GB, make_plan

    plan = make_plan(model, method or None, length, batch, examples, gpu, threads)
    if as_json:
        print(json.dumps(plan.as_dict()))
        return
    out.print(f"[bold]{plan.described_as}[/bold]: {plan.parameters / 1e6:,.0f}M parameters; {plan.batch} x "
              f"{plan.length} tokens per step (micro-batch {plan.micro_batch}), {plan.examples:,} examples per epoch "
              f"on {plan.device}", highlight=False)
    table = Table(header_style="bold", title_justify="left")
    for column in ("method", "trains", "weights", "grad+opt", "activ.", "total", "epoch", "fits"):
        table.add_column(column, justify="left" if column in ("method", "fits") else "right", no_wrap=True)
    refused = []
    for row in plan.methods:
        if row.refused:
            refused.append(f"  {row.method}: {row.refused}")
            continue
        fits = "[green]yes[/green]" if row.fits else "[red]no[/red]"
        table.add_row(row.method, _millions(row.trainable), f"{row.weights / GB:.2f}",
                      f"{(row.gradients + row.optimizer) / GB:.2f}", f"{row.activations / GB:.2f}",
                      f"[bold]{row.total / GB:.2f}[/bold]", _duration(row.seconds_per_epoch), fits)
    out.print(table)
    runtime = plan.methods[0].runtime if plan.methods else 0
    out.print(f"  GB; total = weights + gradients + AdamW state + activations + {runtime / GB:.2f} GB for Python and "
              f"the libraries; fits: total <= {plan.capacity / GB:.1f} GB", highlight=False)
    for line in refused:
        out.print(f"  [red]cannot run[/red] {line.strip()}", highlight=False)
    out.print(f"  speed: {plan.speed_note}", highlight=False)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e5 else f"{n:,}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
