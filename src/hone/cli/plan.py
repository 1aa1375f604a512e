"""`hone plan`: memory and time of a training job for each method, before anything is loaded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
# Objectives whose model is the causal LM the memory plan describes (classify/ner/reward add a head).


def plan_command(
    model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Catalogue name, local folder, or a size such as 7b or 360m"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Read this training data and advise the recipe (objective, method, lr, epochs, ...)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (same as MODEL)"),
    objective: Optional[str] = typer.Option(None, "--objective", help="With --data: keep this objective, advise the rest"),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Plan only these methods (default: every causal-LM method)"),
    length: int = typer.Option(512, "--length", help="Tokens per sequence"),
    batch: int = typer.Option(8, "--batch", help="Sequences per optimizer step"),
    examples: int = typer.Option(1000, "--examples", help="Training examples per epoch"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a named GPU instead of this machine (h100, a100, l4, t4, ...)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the idle cores now)"),
    data_format: Optional[str] = typer.Option(None, "--format", help="With --data: force the data shape (default: detected)"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (or the advice) as JSON"),
    budget: Optional[str] = typer.Option(None, "--budget", help="A sweep budget (30m, 1.5h): how many trials fit it"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="With --budget: plan from this sweep's measured step times"),
):
    """Before training: memory and time per epoch for each method (and, with --data, the recipe the data calls for)."""
    model = model or model_arg
    if budget is not None and data is None:
        return _budget(budget, sweep, None, as_json)
    if sweep is not None and budget is None:
        raise typer.BadParameter("--sweep plans a --budget: give both", param_hint="--sweep")
    if data is not None:
        advice = _advise(data, model, objective, method[0] if method else None, data_format, as_json)
        if budget is not None:
            return _budget(budget, sweep, advice.seconds, as_json)
        from hone.objectives.registry import OBJECTIVES  # here, not at the top: it loads torch

        if as_json or OBJECTIVES[advice.objective].head is not None:  # the memory plan is for LM objectives
            return
        method, length, batch, examples = [advice.method], advice.max_length, advice.batch_size, advice.n_examples
        out.print()
    _plan(model or "smollm2-135m-instruct", method or None, length, batch, examples, gpu, threads, as_json)


def _budget(budget: str, sweep: str | None, estimate: float | None, as_json: bool) -> None:
    from hone.sweeps.budget import budget_plan, parse_duration

    plan = budget_plan(parse_duration(budget) or 0.0, sweep, estimate)
    if as_json:
        print(json.dumps(plan))
        return
    per_step = f", {plan['seconds_per_step']:.2f} s per step x {plan['steps_per_trial']:g} steps" if plan.get(
        "seconds_per_step") else ""
    out.print(f"[bold]{plan['trials']} trials[/bold] fit {budget}: ~{plan['trial_seconds']:.0f} s per trial"
              f"{per_step} ({plan['source']})", highlight=False)


def _advise(data: Path, model, objective, method, data_format, as_json: bool):
    from hone.cli.summary import hone_command
    from hone.config import load_config, overrides
    from hone.objectives.advice import advice_rows, advise

    cfg = load_config(None, overrides(None, **{"model.name": model, "objective": objective, "method.name": method,
                                               "data.format": data_format}))
    advice = advise(data, cfg)
    if as_json:
        print(json.dumps(advice.to_json(), ensure_ascii=False))
        return advice
    table = Table(title=f"Recipe for {data} ({advice.n_examples} examples, {advice.shape})", header_style="bold")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True, style="bold")
    table.add_column("why")
    for row in advice_rows(advice):
        table.add_row(*row)
    out.print(table)
    out.print(f"Train with it:  {hone_command()} train --data {data}"
              + (f" -m {model}" if model else "") + "   (any flag overrides the advice)", highlight=False)
    return advice


def _plan(model: str, methods, length: int, batch: int, examples: int, gpu, threads, as_json: bool) -> None:
    from hone.objectives.plan import GB, make_plan

    plan = make_plan(model, methods, length, batch, examples, gpu, threads)
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
