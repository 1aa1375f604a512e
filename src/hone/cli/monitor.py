"""`hone monitor MODEL`: the served model's health, input drift and alarms (the CLI side of hone.monitor)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Column, Table

out = Console()
err = Console(stderr=True)


def monitor_command(
    model: str = typer.Argument(..., help="The model as clients name it (ft:..., a base name) or its served id"),
    since: Optional[str] = typer.Option(None, "--since", help="Only traffic since: 24h, 7d, 2w or a date (2026-12-01)"),
    org: Optional[str] = typer.Option(None, "--org", help="Only this org's traffic"),
    db: Optional[str] = typer.Option(None, "--db", help="Service database URL (default: SQLite under the hone home, as hone serve)"),
    training_data: Optional[Path] = typer.Option(None, "--training-data", help="Compare inputs with this file (default: the tuned model's own training data)"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="YAML file overriding alarm thresholds (drift_p, bad_feedback, ...)"),
    report: bool = typer.Option(False, "--report", help="Also write the HTML page"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --report: where (default <hone home>/monitor/MODEL.html)"),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when an alarm fires (for schedulers)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line (requests, drift, alarms, ...)"),
):
    """Per-day traffic, latency, answer lengths, empty/refusal/never-stops rates, bad feedback, and drift of
    the inputs against the training data (MMD on MiniLM embeddings, with a p-value); alarms past thresholds."""
    from hone.errors import UserError
    from hone.monitor.alarms import load_thresholds
    from hone.monitor.traffic import parse_since
    from hone.monitor.watch import monitor_model

    if output is not None and not report:
        raise UserError("--output is where --report writes the page: add --report", field="output")
    result = monitor_model(model, parse_since(since), org, db, load_thresholds(thresholds), training_data, console=err)
    if report:
        from hone.home import hone_home
        from hone.monitor.report import write_monitor_report

        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-") or "model"
        page = write_monitor_report(result, output or hone_home() / "monitor" / f"{slug}.html")
        err.print(f"report: {page}", highlight=False)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        show(result)
    if strict and result.alarms:
        raise typer.Exit(1)


def show(result) -> None:
    pct = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    table = Table(Column("day", no_wrap=True), "requests", "p50 ms", "p95 ms", "tokens", "empty", "refusals", "never stops", "rated", "bad",
                  header_style="bold", title=f"{result.model}: {result.requests} requests")
    for d in result.days:
        table.add_row(d["day"], str(d["requests"]), str(d["latency_p50_ms"]), str(d["latency_p95_ms"]),
                      str(d["answer_tokens_mean"]), pct(d["empty_rate"]), pct(d["refusal_rate"]),
                      pct(d["never_stops_rate"]), str(d["rated"]), pct(d["bad_share"]))
    out.print(table)
    drift = result.drift
    if drift.get("skipped"):
        out.print(f"drift: not measured ({drift['skipped']})", highlight=False)
    else:
        verdict = "[red]drifted[/red]" if drift["drifted"] else "[green]no drift detected[/green]"
        out.print(f"drift: {verdict}: MMD² {drift['mmd2']:.5f}, p = {drift['p_value']:.4g} "
                  f"({drift['inputs']} inputs against {drift['training_examples']} training examples)")
        for o in result.outliers[:3]:
            out.print(f"  far input ({o['similarity']:.2f}): {o['input'][:90]!r}\n    nearest training: "
                      f"{o['nearest'][:90]!r}", highlight=False, markup=False)
    if result.labels:
        out.print(f"labels: total variation {result.labels['total_variation']:.3f}, p = {result.labels['p_value']:.4g}",
                  highlight=False)
    for alarm in result.alarms:
        out.print(f"[red]alarm[/red] {alarm['name']}: {alarm['message']}")
    if not result.alarms:
        out.print("[green]no alarms[/green]")
