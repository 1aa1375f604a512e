"""The monitor's page in the report format (evaluation/templates' look): summary with alarms, days, drift."""
from __future__ import annotations

import time
from pathlib import Path

from hone import atomic
from hone.monitor.watch import MonitorResult
from hone.version import __version__

SECTIONS = {"summary": "Summary", "days": "Traffic by day", "drift": "Input drift", "labels": "Predicted labels"}


def pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def write_monitor_report(result: MonitorResult, path: Path) -> Path:
    """Render the page to `path` (atomically); returns it."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.ChoiceLoader([jinja2.PackageLoader("hone.monitor", "templates"),
                                                         jinja2.PackageLoader("hone.evaluation", "templates")]),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))  # noqa: E731
    window = f"since {stamp(result.since)}" if result.since else "all captured traffic"
    sections = {k: v for k, v in SECTIONS.items() if k != "labels" or result.labels}
    labels = sorted(set(result.labels["training"]) | set(result.labels["served"])) if result.labels else []
    html = env.get_template("monitor.html.j2").render(r=result, sections=sections, window=window, pct=pct,
                                                      generated=stamp(result.generated_at), version=__version__,
                                                      label_names=labels)
    atomic.write_text(path, html)
    return path
