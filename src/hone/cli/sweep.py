"""`hone sweep` (search settings within a budget; `hone sweep show NAME`) and `hone merge`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from hone.errors import Interrupted, UserError

out = Console()
err = Console(stderr=True)


def sweep_command(
    target: Optional[str] = typer.Argument(None, metavar="[CONFIG | show]", help="YAML config (optional), or `show` to print a sweep"),
    shown: Optional[str] = typer.Argument(None, metavar="[NAME]", help="With `show`: the sweep's name"),
    name: Optional[str] = typer.Option(None, "--name", help="The sweep's name; running the same command again resumes it"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Training data"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data (selection uses it; default a held-out share of train)"),
    test: Optional[Path] = typer.Option(None, "--test", help="Test data: sealed during the trials, scored once on the best trial at the end"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model"),
    method: Optional[str] = typer.Option(None, "--method", help="Adaptation method"),
    objective: Optional[str] = typer.Option(None, "--objective", help="Objective (default: chosen from the data)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="Trial time for the whole sweep: 30m, 90s, 1.5h"),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Finished trials to aim at"),
    space: Optional[str] = typer.Option(None, "--space", help="Dimensions to search, e.g. lr,epochs,lora_r (default per method)"),
    seed: int = typer.Option(42, "--seed", help="Seed of the sampler"),
    no_prune: bool = typer.Option(False, "--no-prune", help="Let every trial finish (no median pruning)"),
    workers: bool = typer.Option(False, "--workers", help="Run the trials on `hone worker --sweeps` processes sharing the database (one trial each); this command waits for them"),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Any config field: section.field=value"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on the last line"),
):
    """Search the recipe's settings (lr, epochs, rank, ...) within a budget; the best is scored once on the test split."""
    import hone

    if target == "show":
        if not shown:
            raise UserError("hone sweep show NAME: which sweep?")
        from hone.sweeps import show_sweep

        _print_sweep(show_sweep(shown), as_json)
        return
    if shown:
        raise UserError(f"unexpected argument {shown!r}; hone sweep [CONFIG] --name NAME ...")
    if not name:
        raise UserError("--name is required: it names the sweep, and running the same command again resumes it")
    try:
        result = hone.sweep(target, name=name, budget=budget, trials=trials, space=space, seed=seed,
                            prune=not no_prune, workers=workers, console=err, sets=sets, data=data, validation=validation, test=test,
                            model=model, method=method, objective=objective)
    except Interrupted as exc:
        raise typer.Exit(_interrupted(exc)) from None
    _print_sweep(result, as_json)


def _interrupted(exc: Interrupted) -> int:
    import sys

    sys.stderr.write(f"{exc}\n")
    return 130


def _print_sweep(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False, default=str))
        return
    params = sorted({p for t in result.trials for p in t["params"]})
    table = Table(title=f"sweep {result.name}", header_style="bold")
    for column in ("trial", "state", "val loss", *params, "steps", "s"):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    for t in result.trials:
        mark = "[bold green]" if t["value"] is not None and t["value"] == result.best_value else ""
        table.add_row(f"{mark}{t['number']}", t["state"], "" if t["value"] is None else f"{t['value']:.4f}",
                      *[_fmt(t["params"].get(p)) for p in params], str(t.get("steps") or ""),
                      str(round(t["seconds"])) if t.get("seconds") else "")
    out.print(table)
    if result.best_params is not None:
        out.print(f"best: trial with validation loss {result.best_value:.4f}: {result.best_params}", highlight=False)
    test = result.test
    if test and test.get("metric"):
        out.print(f"test ({test['data']}, read once after selection): {test['metric']} base {test['base']:.3f}, "
                  f"best trial {test['tuned']:.3f}", highlight=False)
    if result.best_config:
        out.print(f"train it: hone train {result.best_config}", highlight=False)
    if result.report:
        out.print(f"report: {result.report}", highlight=False)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def merge_command(
    runs: List[str] = typer.Argument(..., help="Two or more finished runs (folder, id, NAME:VERSION, NAME@TAG) of one base"),
    method: str = typer.Option("linear", "--method", help="linear, ties, dare_ties or cat (LoRA only)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="One weight per run, comma-separated (default: linear 1/N, others 1)"),
    density: float = typer.Option(0.5, "--density", min=0.0, max=1.0, help="ties, dare_ties: share of each update kept"),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the merged model in the registry"),
    search: Optional[str] = typer.Option(None, "--search", help="Try weights on the validation splits within this budget (e.g. 5m)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on the last line"),
):
    """Merge tuned models of one base into a new registered model, scored on each parent's test split."""
    import hone

    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise UserError(f"--weights {weights!r}: give numbers separated by commas, e.g. 0.6,0.4") from None
    result = hone.merge(runs, method=method, weights=parsed, name=name, density=density, search=search, console=err)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False, default=str))
        return
    table = Table(title=f"merge ({result.method}, weights {', '.join(f'{w:.2f}' for w in result.weights)})",
                  header_style="bold")
    labels = ["base", *result.parents, "merged"]
    for column in ("test split", "metric", "n", *labels):
        table.add_column(column, justify="left" if column in ("test split", "metric") else "right")
    for row in result.table:
        table.add_row(row["test"], row["metric"], str(row["n"]), *[_fmt(row.get(label)) for label in labels])
    out.print(table)
    out.print(f"merged model: {result.run_dir}", highlight=False)
