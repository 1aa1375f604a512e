"""`hone promote`: the CLI side of hone.evaluation.promotion."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def promote_command(
    candidate: str = typer.Argument(..., help="The candidate run: NAME:VERSION, run id or folder"),
    over: str = typer.Option("production", "--over", help="The tag to win: the candidate is weighed against NAME@TAG"),
    new_slice: Optional[Path] = typer.Option(None, "--new-slice", help="Held-out new data on which the candidate must be better (default: the slice hone data from-traffic held out of the candidate's training data)"),
    max_forgetting: Optional[float] = typer.Option(None, "--max-forgetting", help="Probe drop allowed, in points (default: the champion's eval.max_forgetting)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items of each set"),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts generated together"),
    seed: int = typer.Option(0, "--seed", help="Seed for generation and the bootstrap"),
    force: bool = typer.Option(False, "--force", help="Move the tag even when a condition fails (the failures are still printed and recorded)"),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as one JSON object on the last line"),
):
    """Move NAME@TAG to CANDIDATE only if it is not worse on the original test, better on the new slice and
    within the forgetting limit (paired bootstrap intervals); otherwise say why not."""
    import hone

    result = hone.promote(candidate, over=over, new_slice=new_slice, force=force, limit=limit,
                          max_forgetting=max_forgetting, batch_size=batch_size, seed=seed, console=err)
    show = err if as_json else out
    for condition in result.conditions:
        mark = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "[dim]n/a [/dim]"}[condition.passed]
        show.print(f"  {mark}  {condition.line}", highlight=False)
    name = result.candidate.split(":")[0]
    if result.promoted and result.forced:
        show.print(f"[yellow]{name}@{result.tag} -> {result.candidate} (was {result.champion}), FORCED past "
                   f"{len(result.reasons)} failed condition(s) above[/yellow]", highlight=False)
    elif result.promoted:
        show.print(f"[green]{name}@{result.tag} -> {result.candidate}[/green] (was {result.champion})", highlight=False)
    else:
        show.print(f"[red]not promoted[/red]: {name}@{result.tag} stays {result.champion}", highlight=False)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    if not result.promoted:
        raise typer.Exit(1)
