"""The quality report as a person reads it: a terminal summary and a self-contained HTML page.

Both are built from the same list of findings, so they never disagree. The HTML page inlines its
CSS and draws the token-length histogram as inline SVG: it opens offline, with no CDN.
"""
from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class Finding:
    level: str        # "error" (records skipped), "warn" (weak data), "info"
    title: str
    count: int
    where: str        # line numbers or a short detail


def _lines(values, limit: int = 8) -> str:
    values = [v for v in values if v is not None]
    shown = ", ".join(str(v) for v in values[:limit])
    return f"lines {shown}{', ...' if len(values) > limit else ''}" if values else ""


def _groups(groups: list[list[int]], limit: int = 4) -> str:
    shown = "; ".join(" = ".join(str(line) for line in g[:4]) + (" ..." if len(g) > 4 else "") for g in groups[:limit])
    return f"lines {shown}{'; ...' if len(groups) > limit else ''}" if groups else ""


def findings(entry: dict) -> list[Finding]:
    """Everything worth saying about one file, most serious first."""
    out = []
    validation = entry["validation"]
    for kind, count in validation["counts"].items():
        examples = validation["problems"].get(kind, [])
        first = examples[0] if examples else None
        detail = (f"{first['file'].rsplit('/', 1)[-1]}:{first['line']}: {first['message']}" if first and first["line"]
                  else (first["message"] if first else ""))
        level = "warn" if kind == "too_long" else "error"
        out.append(Finding(level, kind, count, detail))
    dup, near, conflicts = entry["exact_duplicates"], entry["near_duplicates"], entry["conflicts"]
    if dup["groups"]:
        out.append(Finding("warn", "exact duplicates (extra copies)", dup["extra_copies"], _groups(dup["examples"])))
    if near["groups"]:
        out.append(Finding("warn", "near-duplicates (extra copies)", near["extra_copies"], _groups(near["examples"])))
    if conflicts["inputs"]:
        out.append(Finding("warn", "same input, conflicting outputs", conflicts["inputs"],
                           _groups(conflicts["examples"])))
    short = entry["short_outputs"]
    if short["count"]:
        out.append(Finding("warn", f"empty or very short outputs (<= {short['max_chars']} chars)", short["count"],
                           _lines(short["lines"])))
    for kind, found in entry["pii"].items():
        out.append(Finding("warn", f"PII: {kind}", found["count"], _lines(found["lines"])))
    tokens = entry["tokens"]
    if tokens.get("truncated"):
        out.append(Finding("warn", f"longer than max_seq_len {tokens['max_seq_len']} (truncated in training)",
                           tokens["truncated"], ""))
    if tokens.get("over_cap"):
        out.append(Finding("warn", f"over {tokens['cap']:,} tokens (counted no further)", tokens["over_cap"],
                           _lines(tokens["over_cap_lines"])))
    labels = entry["labels"]
    if labels and labels["imbalance"] >= 3:
        out.append(Finding("warn", "label imbalance (commonest / rarest)", labels["classes"],
                           f"{labels['commonest']!r} x{labels['imbalance']} of {labels['rarest']!r}"))
    for note in validation["notes"]:
        out.append(Finding("info", "note", 1, note))
    return out


def leakage_findings(report: dict) -> list[Finding]:
    out = []
    for pair in report["leakage"]:
        a, b = (p.rsplit("/", 1)[-1] for p in pair["files"])
        for key, title, lines in (("exact", "identical records", "exact_lines"),
                                  ("same_input", "same input", "same_input_lines"),
                                  ("near", "near-duplicates", "near_lines")):
            if pair[key]:
                out.append(Finding("error", f"leakage {a} -> {b}: {title}", pair[key], f"{b} {_lines(pair[lines])}"))
    return out


def _longest(tokens: dict) -> str:
    """The longest record's tokens: "over N" when counting stopped at the cap."""
    return f"over {tokens['cap']:,}" if tokens.get("over_cap") else str(tokens["max"])


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def training_line(report: dict) -> str | None:
    training = report.get("training")
    if not training:
        return None
    text = f"{training['tokens_per_epoch']:,} tokens per epoch"
    measured = training.get("measured")
    if measured:
        text += (f"; {training['epochs']:g} epochs ~ {format_seconds(training['seconds'])} on this machine at "
                 f"{measured['tokens_per_s']:.0f} tok/s (measured in run {measured['run']}, {measured['method']})")
    else:
        text += "; no training run of this model measured on this machine yet, so no time estimate"
    return text


def print_report(report: dict, console) -> None:
    """The terminal summary (rich)."""
    from rich.table import Table
    from rich.text import Text

    colour = {"error": "red", "warn": "yellow", "info": "dim"}
    for entry in report["files"]:
        tokens = entry["tokens"]
        head = (f"[bold]{entry['file']}[/bold]: {entry['valid']:,} valid of {entry['records']:,} records, "
                f"shape {entry['shape'] or '?'}")
        console.print(head)
        if tokens:
            console.print(f"  tokens: median {tokens['median']}, p90 {tokens['p90']}, max {_longest(tokens)} "
                          f"(min {tokens['min']}); {tokens['total']:,} in all", highlight=False)
        if entry["labels"]:
            shown = ", ".join(f"{k} {v}" for k, v in list(entry["labels"]["labels"].items())[:8])
            console.print(f"  labels: {shown}", markup=False, highlight=False)
        if (example := entry.get("example")) and example.get("text"):
            shown = example["text"] if len(example["text"]) <= 2000 else example["text"][:2000] + " ..."
            console.print(f"  rendered example (line {example['line']}; trained tokens in [[ ]]):", highlight=False)
            console.print(Text(shown, style="dim"))
        rows = findings(entry)
        if not rows:
            console.print("  [green]no problems found[/green]")
            continue
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        for column in ("", "finding", "count", "where"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(Text(row.level, style=colour[row.level]), Text(row.title), f"{row.count:,}", Text(row.where))
        console.print(table)
    for row in leakage_findings(report):
        console.print(Text(f"{row.title}: {row.count:,} ({row.where})", style="red"))
    if (line := training_line(report)):
        console.print(line, highlight=False)


def _svg_histogram(histogram: dict, width: int = 560, height: int = 160) -> str:
    counts, edges = histogram["counts"], histogram["edges"]
    top = max(counts) or 1
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 20 - c / top * (height - 30):.1f}" width="{bar - 2:.1f}" '
        f'height="{c / top * (height - 30):.1f}"><title>{edges[i]:g}-{edges[i + 1]:g} tokens: {c}</title></rect>'
        for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="token length histogram">{rects}'
            f'<text x="0" y="{height - 4}">{edges[0]:g}</text>'
            f'<text x="{width}" y="{height - 4}" text-anchor="end">{edges[-1]:g} tokens</text></svg>')


STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}.error{color:#b00020;font-weight:600}.warn{color:#a15c00}.info{color:#666}
rect{fill:#4a7bd0}svg text{font-size:11px;fill:#555}code{font-size:.92em}.ok{color:#1b7d2c}"""


def render_html(report: dict) -> str:
    """A readable, self-contained HTML page of the report."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hone data check</title>"
             f"<style>{STYLE}</style></head><body><h1>hone data check</h1>"]
    if (line := training_line(report)):
        parts.append(f"<p>{e(line)}</p>")
    if report.get("model"):
        parts.append(f"<p>Token counts with the tokenizer of <code>{e(report['model'])}</code>.</p>")
    for entry in report["files"]:
        parts.append(f"<h2>{e(entry['file'])}</h2><p>{entry['valid']:,} valid of {entry['records']:,} records; "
                     f"shape <code>{e(str(entry['shape']))}</code>; "
                     f"fingerprint <code>{entry['fingerprint'][:16]}</code></p>")
        rows = findings(entry)
        if rows:
            parts.append("<table><tr><th></th><th>finding</th><th>count</th><th>where</th></tr>")
            parts += [f"<tr><td class='{r.level}'>{r.level}</td><td>{e(r.title)}</td><td>{r.count:,}</td>"
                      f"<td>{e(r.where)}</td></tr>" for r in rows]
            parts.append("</table>")
        else:
            parts.append("<p class='ok'>No problems found.</p>")
        if (example := entry.get("example")) and example.get("text"):
            parts.append(f"<p>Line {example['line']} as training renders it, trained tokens in [[ ]]:</p>"
                         f"<pre>{e(example['text'])}</pre>")
        tokens = entry["tokens"]
        if tokens:
            parts.append(f"<p>Tokens per example: min {tokens['min']}, median {tokens['median']}, "
                         f"p90 {tokens['p90']}, p99 {tokens['p99']}, max {_longest(tokens)}; {tokens['truncated']:,} "
                         f"longer than max_seq_len {tokens['max_seq_len']}.</p>{_svg_histogram(tokens['histogram'])}")
        if entry["labels"]:
            parts.append("<table><tr><th>label</th><th>records</th></tr>" + "".join(
                f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in entry["labels"]["labels"].items()) + "</table>")
    leaks = leakage_findings(report)
    if len(report["files"]) > 1:
        parts.append("<h2>Leakage between files</h2>")
        parts.append("".join(f"<p class='error'>{e(r.title)}: {r.count:,} ({e(r.where)})</p>" for r in leaks)
                     or "<p class='ok'>No shared or near-duplicate records between the files.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
