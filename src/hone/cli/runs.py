"""`hone runs`: the run registry from the command line (the CLI side of hone.registry)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)
runs_app = typer.Typer(no_args_is_help=True, help="The run registry: list, show, diff, tag and remove runs.")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)[:120]
    return "-" if value is None else str(value)


@runs_app.command("list")
def runs_list(name: Optional[str] = typer.Option(None, "--name", help="Only runs of this name"),
              status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status"),
              limit: int = typer.Option(20, "--limit", help="Newest N runs (0: all)"),
              as_json: bool = typer.Option(False, "--json")):
    """Registered runs, newest first (run folders made before the registry are imported first)."""
    from hone.registry import import_run_folders, list_runs

    import_run_folders()
    rows = list_runs(name, status, limit or None)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        out.print("No runs yet. Start one with: hone train --data FILE")
        return
    table = Table(header_style="bold")
    tagged = any(row["tags"] for row in rows)
    for column in ("ref", "status", "method", "score", "forgetting", "created") + (("tags",) if tagged else ()):
        table.add_column(column, overflow="fold")
    for row in rows:
        metrics = row["metrics"] or {}
        score = metrics.get("tuned_score")
        forgetting = metrics.get("forgetting")
        cells = [row["ref"], row["status"], row["method"] or "-",
                 f"{score:.1%}" if isinstance(score, (int, float)) else "-",
                 (f"{forgetting['drop']:+.1f} pts " + ("ok" if forgetting["passed"] else "[red]FAIL[/red]"))
                 if forgetting else "-", row["created_at"][:16].replace("T", " ")]
        table.add_row(*cells, *([", ".join(row["tags"])] if tagged else []))
    out.print(table)
    out.print("[dim]hone runs show REF for everything about one run (REF: NAME:VERSION, NAME@TAG or the id)[/dim]")


@runs_app.command("show")
def runs_show(ref: str = typer.Argument(..., help="Run id, NAME, NAME:VERSION or NAME@TAG"),
              as_json: bool = typer.Option(False, "--json")):
    """Everything recorded about one run."""
    from hone.registry.promotions import promotions_of
    from hone.registry.store import lineage, show_run

    row = show_run(ref)
    row["lineage"] = [f"{r.name}:{r.version} ({r.id})" for r in lineage(row["id"])]
    row["promotions"] = promotions_of(row["id"])
    if as_json:
        print(json.dumps(row, default=str))
        return
    table = Table(show_header=False, title=f"{row['ref']}  ({row['id']})")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("status", "path", "base_model", "base_model_hash", "method", "objective", "parent_id", "tags",
                "hone_version", "created_at", "finished_at"):
        table.add_row(key, _fmt(row[key]))
    if len(row["lineage"]) > 1:  # trained on the tuned model of its parent, and so on back to a plain base
        table.add_row("lineage", " <- ".join(row["lineage"]))
    for role, info in (row["data"] or {}).items():
        table.add_row(f"data.{role}", f"{info['path']}  sha256 {info['sha256'][:16]}…")
    metrics = row["metrics"] or {}
    if metrics.get("recipe"):
        from hone.evaluation.report import recipe_line

        table.add_row("recipe", recipe_line(metrics["recipe"]))
    for key, value in metrics.items():
        if not isinstance(value, list) and key != "recipe":
            table.add_row(f"metrics.{key}", _fmt(value))
    artifacts = dict(row["artifacts"] or {})
    exports = artifacts.pop("exports", [])
    for key, value in artifacts.items():
        table.add_row(f"artifacts.{key}", _fmt(value))
    for entry in exports:  # hone export: each artifact with its size, hash and how it compared with the run
        check = entry.get("verification") or {}
        table.add_row(f"export {entry['format']} {entry['quant']}",
                      f"{entry['path']}  {entry['bytes'] / 1e6:,.1f} MB  sha256 {entry['sha256'][:16]}…  "
                      f"max |Δlogit| {check.get('max_logit_delta', float('nan')):.3g}, greedy answers agree "
                      f"{check.get('greedy_agree', '?')}/{check.get('prompts', '?')}")
    for decision in row["promotions"]:  # hone promote: weighed against (or as) the tagged version
        moved = ("promoted, forced" if decision["forced"] else "promoted") if decision["promoted"] else "refused"
        role = "candidate" if decision["candidate_id"] == row["id"] else f"{decision['tag']} (champion)"
        why = "; ".join(decision["reasons"]) or "every condition held"
        table.add_row(f"promotion {decision['decided_at'][:16].replace('T', ' ')}",
                      f"{role} for {decision['name']}@{decision['tag']}: {moved}. {why}")
    table.add_row("libraries", ", ".join(f"{k} {v}" for k, v in (row["libraries"] or {}).items()))
    out.print(table)


@runs_app.command("diff")
def runs_diff(a: str = typer.Argument(..., help="First run"), b: str = typer.Argument(..., help="Second run"),
              as_json: bool = typer.Option(False, "--json")):
    """What differs between two runs: config, data, base model, metrics."""
    from hone.registry import diff_runs

    diff = diff_runs(a, b)
    if as_json:
        print(json.dumps(diff, default=str))
        return
    table = Table(header_style="bold")
    for column in ("field", a, b):
        table.add_column(column, overflow="fold")
    for section in ("run", "config", "data", "metrics"):
        for key, left, right in diff[section]:
            table.add_row(key if section == "run" else f"{section}.{key}", _fmt(left), _fmt(right))
    out.print(table if table.row_count else "No differences.")


@runs_app.command("tag")
def runs_tag(ref: str = typer.Argument(..., help="Run id, NAME:VERSION or NAME@TAG"),
             tag: str = typer.Argument(..., help="Tag, e.g. production"),
             remove: bool = typer.Option(False, "--remove", help="Remove the tag instead")):
    """Point NAME@TAG at a run (moving it from another version of the same name)."""
    from hone.registry import set_tag

    row, previous = set_tag(ref, tag, remove)
    if remove:
        out.print(f"{row.name}@{tag} removed (was {row.ref})")
    else:
        moved = f" (moved from {previous})" if previous and previous != row.id else ""
        out.print(f"{row.name}@{tag} -> {row.ref} ({row.id}){moved}")


@runs_app.command("rm")
def runs_rm(ref: str = typer.Argument(..., help="Run id, NAME:VERSION or NAME@TAG"),
            yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting files"),
            keep_files: bool = typer.Option(False, "--keep-files", help="Forget the run but keep its folder")):
    """Remove a run from the registry and delete its folder (asks first)."""
    from pathlib import Path as _Path

    from hone.registry import get_run, remove_run

    row = get_run(ref)
    folder = _Path(row.path)
    if not keep_files and folder.is_dir() and not yes:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if not typer.confirm(f"Delete run {row.ref} ({row.id}) and its folder {folder} ({size / 1e6:.1f} MB)?"):
            err.print("Nothing removed.")
            raise typer.Exit(1)
    remove_run(ref, delete_files=not keep_files)
    out.print(f"Removed {row.ref} ({row.id})" + ("" if keep_files or not folder.exists() else f"; deleted {folder}"))
