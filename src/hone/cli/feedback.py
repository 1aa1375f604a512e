"""`hone feedback list/export`: ratings and corrections posted to /v1/feedback (the CLI side of hone.monitor.traffic)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
feedback_app = typer.Typer(no_args_is_help=True, help="Ratings and corrections of served answers (POST /v1/feedback).")
DB_HELP = "Service database URL (default: SQLite under the hone home, as hone serve)"


def _rated(model, org, rating, since, db) -> list[dict]:
    from hone.errors import UserError
    from hone.monitor.traffic import feedback_rows, parse_since, read_exchanges

    if rating not in (None, "good", "bad"):
        raise UserError(f"--rating {rating!r}: good or bad", field="rating")
    rows = feedback_rows(read_exchanges(model, parse_since(since), org, db, rated=True))
    return [r for r in rows if rating is None or r["rating"] == rating]


@feedback_app.command("list")
def feedback_list(model: Optional[str] = typer.Option(None, "--model", help="Only this model (as clients named it)"),
                  org: Optional[str] = typer.Option(None, "--org", help="Only this org"),
                  rating: Optional[str] = typer.Option(None, "--rating", help="good or bad"),
                  since: Optional[str] = typer.Option(None, "--since", help="24h, 7d or a date (2026-12-01)"),
                  db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """Rated answers, oldest first: time, org, model, rating, the question and the correction."""
    rows = _rated(model, org, rating, since, db)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        out.print("no feedback yet (clients POST /v1/feedback to a server started with --capture)")
        return
    table = Table("time", "org", "model", "rating", "question", "correction")
    for r in rows:
        question = next((m["content"] for m in reversed(r["messages"]) if m["role"] in ("user", "prompt")), "")
        table.add_row(time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"])), r["org"], r["model"],
                      r["rating"], str(question)[:60], (r["correction"] or "")[:60])
    out.print(table)


@feedback_app.command("export")
def feedback_export(output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write"),
                    model: Optional[str] = typer.Option(None, "--model", help="Only this model"),
                    org: Optional[str] = typer.Option(None, "--org", help="Only this org"),
                    rating: Optional[str] = typer.Option(None, "--rating", help="good or bad"),
                    since: Optional[str] = typer.Option(None, "--since", help="24h, 7d or a date"),
                    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)):
    """Write rated answers as JSONL (id, org, model, messages, answer, rating, correction); see also
    `hone data from-traffic`, which turns them into training data."""
    from hone import atomic

    rows = _rated(model, org, rating, since, db)
    atomic.write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out.print(f"{output}: {len(rows)} rated answer(s)", highlight=False)
