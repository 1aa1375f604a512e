"""How `hone eval` results are shown in the terminal: metrics with intervals, suite regressions, judge."""
from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from hone.evaluation.report import recipe_line
from hone.evaluation.run_eval import EvalResult


def _value(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if percent:
        return f"{value:.1%}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def _diff(value, percent: bool) -> str:
    return "-" if value is None else (f"{value * 100:+.1f}" if percent else f"{value:+.2f}")


def _interval(interval, percent: bool) -> str:
    if not interval:
        return "-"
    low, high = interval
    return f"[{_diff(low, percent)}, {_diff(high, percent)}]"


def _clip(text: str, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_classification(classification: dict, console: Console) -> None:
    labels = classification["labels"]
    roles = [r for r in ("base", "tuned") if r in classification]
    scores = ", ".join(f"{role} accuracy {classification[role]['accuracy']:.1%} / macro-F1 "
                       f"{classification[role]['macro_f1']:.3f}" for role in roles)
    console.print(f"\n[bold]Classifier[/bold]: {scores} (base: its generated answer, matched to a label up to case)")
    matrix = Table(title="Confusion matrix (tuned): rows true label, columns predicted", header_style="bold",
                   title_justify="left")
    matrix.add_column("")
    for label in labels:
        matrix.add_column(_clip(label, 16), justify="right")
    for label, row in zip(labels, classification["tuned"]["confusion_matrix"]["rows"]):
        matrix.add_row(_clip(label, 24), *[str(n) for n in row])
    console.print(matrix)


def print_eval(result: EvalResult, console: Console) -> None:
    comparison = result.comparison
    has_base = result.base_name is not None
    if line := recipe_line(result.recipe):
        console.print(f"Recipe: {line}", highlight=False)
    if comparison:
        title = f"{comparison.n} test items" + (f": {result.base_name} (base) vs {result.tuned_name}" if has_base
                                                else f": {result.tuned_name}")
        table = Table(title=title, header_style="bold", title_justify="left")
        table.add_column("metric", no_wrap=True)
        if has_base:
            table.add_column("base", justify="right", no_wrap=True)
        table.add_column("tuned" if has_base else "score", justify="right", no_wrap=True)
        if has_base:
            for column in ("Δ", "95% CI of Δ", "↑ / ↓ / ="):
                table.add_column(column, justify="right", no_wrap=True)
        for m in comparison.metrics:
            name = m.name + (" ↓" if not m.higher_is_better else "")
            name = f"[bold]{name}[/bold]" if m.name == comparison.primary else name
            row = [name]
            if has_base:
                row.append(_value(m.base, m.percent))
            row.append(_value(m.tuned, m.percent))
            if has_base:
                good = m.significant and ((m.difference or 0) > 0) == m.higher_is_better
                colour = "green" if good else "red" if m.significant else "default"
                row += [f"[{colour}]{_diff(m.difference, m.percent)}[/{colour}]",
                        _interval(m.interval, m.percent),
                        f"{m.improved} / {m.regressed} / {m.unchanged}"]
            table.add_row(*row)
        console.print(table)
        if has_base:
            console.print(f"[dim]Δ = tuned - base (percentage points for shares), 95% CI by paired bootstrap over "
                          f"items (1,000 resamples, seed {comparison.seed}); ↑ / ↓ / = items improved, regressed, "
                          f"unchanged on {comparison.primary}; ↓ after a name: lower is better.[/dim]")
    if result.classification:
        print_classification(result.classification, console)
    if result.suite:
        data = result.suite.to_json()
        base = f"base {data['base_passed']}/{data['n']}, " if data["base_passed"] is not None else ""
        console.print(f"\n[bold]Edge-case suite[/bold] {data['file']}: "
                      f"{base}tuned {data['tuned_passed']}/{data['n']} passed")
        for case in result.suite.cases:
            if case.regressed:
                console.print(f"  [red]REGRESSION[/red] {case.name}: the base passed, the tuned model fails "
                              f"({'; '.join(case.tuned_failed)}) — answered {_clip(case.tuned_answer)!r}")
            elif not case.tuned_passed:
                console.print(f"  [yellow]fails[/yellow] {case.name}: {'; '.join(case.tuned_failed)}")
    if result.judge:
        data = result.judge.to_json()
        console.print(f"\n[bold]Judge[/bold] {data['model']}: tuned wins {data['tuned_wins']}, base wins "
                      f"{data['base_wins']}, ties {data['ties']} ({data['inconsistent']} changed verdict when "
                      "the answers swapped places)")
    if result.run_dir:
        console.print(f"\nSaved to {result.run_dir / 'eval.json'}; report: {result.run_dir / 'report.html'}")
