"""A sweep's results: the best trial scored once on the test split, best.yaml, the lesson, the report page.

`finish_sweep` runs when no trial is left to start; `show_sweep` reads the same table back without running
anything. The report (<hone home>/sweeps/NAME/report.html) holds the trial table, the optimisation history,
the parameter importances and the validation curves of the best trials, as inline SVG (evaluation/plots.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from hone import atomic
from hone.config import RunConfig, build_config
from hone.evaluation import plots
from hone.registry.lessons import record_lesson
from hone.sweeps.budget import trial_seconds
from hone.sweeps.distributed import wait_for_workers
from hone.sweeps.storage import load_study
from hone.sweeps.study import SweepOptions, run_trials, space_of, sweep_folder, trial_rows, write_best_config


@dataclass
class SweepResult:
    name: str
    trials: list[dict]
    best_value: float | None
    best_params: dict | None
    best_run: str | None
    best_config: Path | None
    test: dict | None                 # the best trial on the test split, scored once after selection
    folder: Path
    stopped_by: str = ""
    spent_seconds: float = 0.0
    lesson: dict | None = None
    report: Path | None = None
    default_lr: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "trials": self.trials, "best_value": self.best_value,
                "best_params": self.best_params, "best_run": self.best_run,
                "best_config": str(self.best_config) if self.best_config else None, "test": self.test,
                "folder": str(self.folder), "stopped_by": self.stopped_by,
                "spent_seconds": round(self.spent_seconds, 1), "lesson": self.lesson,
                "report": str(self.report) if self.report else None, "default_lr": self.default_lr}


def run_sweep(config: RunConfig, options: SweepOptions, console: Console | None = None) -> SweepResult:
    """Run (or resume) the sweep `options.name` on `config`; returns the table, the best trial and its test score."""
    console = console or Console(stderr=True)
    trials = wait_for_workers(config, options, console) if options.workers else run_trials(config, options, console)
    return finish_sweep(trials.study, trials.config, options, trials.test, trials.stopped_by, console)


def best_trial(study):
    """The finished trial with the lowest validation loss, or None."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value) if done else None


def finish_sweep(study, config: RunConfig, options: SweepOptions, test: Path | None, stopped_by: str,
                 console: Console) -> SweepResult:
    """Selection is over: score the best trial on the test split (once per sweep), write best.yaml, record a
    lesson when the best lr is far from the recipe's, and write the report."""
    import optuna

    folder = sweep_folder(options.name)
    best = best_trial(study)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    lesson = None
    if best is not None and not running:
        if test is not None and "test" not in study.user_attrs:
            study.set_user_attr("test", score_on_test(best, test, console))
        write_best_config(config, best.params, space_of(study), folder)
        if "lr" in best.params and config.data.train is not None:
            lesson = record_lesson(Path(config.data.train), options.name, best.params["lr"], config.lr,
                                   config.objective, config.method.name)
            if lesson:
                console.print(f"  lesson kept: the best lr {best.params['lr']:.2g} is {lesson['ratio']:g}x the "
                              f"recipe's {config.lr:g}; the next run on this data will say so", highlight=False)
    elif running:
        console.print(f"  {len(running)} trial(s) still running in other processes: the last one to finish scores "
                      "the best trial on the test split", highlight=False)
    result = show_sweep(options.name, study)
    result.stopped_by, result.lesson = stopped_by, lesson
    try:  # the report must not cost the sweep
        result.report = write_sweep_report(result, study)
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]  sweep report not written ({type(exc).__name__}: {exc})[/yellow]")
    return result


def score_on_test(best, test: Path, console: Console) -> dict:
    """The best trial's model against its base on the test split, with the paired bootstrap interval: the one
    time the sweep reads the test split."""
    from hone.evaluation.run_eval import EvalOptions, evaluate_model

    console.print(f"  selection done (trial {best.number}, validation loss {best.value:.4f}); scoring it once on "
                  f"the test split {test}", highlight=False)
    evaluation = evaluate_model(best.user_attrs["run_dir"], EvalOptions(data=test, perplexity=False), console=console)
    comparison = evaluation.comparison
    out = {"data": str(test), "trial": best.number, "run_dir": best.user_attrs["run_dir"],
           "scored_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if comparison is not None:
        primary = next(m for m in comparison.metrics if m.name == comparison.primary)
        out |= {"n": comparison.n, "metric": comparison.primary, "base": primary.base, "tuned": primary.tuned,
                "difference": primary.difference, "interval": list(primary.interval) if primary.interval else None}
        console.print(f"  test {comparison.primary}: base {primary.base}, best trial {primary.tuned} "
                      f"(n={comparison.n})", highlight=False)
    return out


def show_sweep(name: str, study=None) -> SweepResult:
    """The sweep's table and best trial as stored, without running anything."""
    study = study or load_study(name)
    best = best_trial(study)
    folder = sweep_folder(name)
    best_config = folder / "best.yaml"
    _, measured = trial_seconds(study)
    return SweepResult(name, trial_rows(study), best.value if best else None, best.params if best else None,
                       best.user_attrs.get("run_dir") if best else None,
                       best_config if best_config.is_file() else None, study.user_attrs.get("test"), folder,
                       spent_seconds=float(study.user_attrs.get("spent_seconds", 0.0)),
                       report=folder / "report.html" if (folder / "report.html").is_file() else None,
                       default_lr=study.user_attrs.get("default_lr"), extra={"measured": measured})


def importances(study) -> dict[str, float]:
    """Each searched parameter's importance for validation loss (Optuna's default evaluator); {} when too few
    trials finished to tell."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


def history_plot(rows: list[dict]) -> str | None:
    """Validation loss per trial (pruned trials at their last report) and the best so far."""
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    plt, fig, ax = plots._figure(height=3.2)
    ax.plot(*zip(*done), marker="o", linestyle="none", color=plots.BLUE, label="trial (best validation loss)")
    best, line = float("inf"), []
    for number, value in done:
        best = min(best, value)
        line.append((number, best))
    ax.step(*zip(*line), where="post", color=plots.GREEN, linewidth=1.5, label="best so far")
    pruned = [r["number"] for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.plot(pruned, [max(v for _, v in done)] * len(pruned), marker="x", linestyle="none", color=plots.RED,
                label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.legend(loc="upper right")
    return plots._svg(plt, fig)


def importance_plot(values: dict[str, float]) -> str | None:
    if not values:
        return None
    plt, fig, ax = plots._figure(height=0.5 + 0.4 * len(values))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color=plots.ORANGE)
    ax.set_xlabel("importance for validation loss (Optuna's default evaluator)")
    return plots._svg(plt, fig)


def curves_plot(rows: list[dict], count: int = 3) -> str | None:
    """Validation loss against step for the `count` best finished trials."""
    best = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                  key=lambda r: r["value"])[:count]
    curves = []
    for row in best:
        path = Path(row["run_dir"] or "") / "metrics.jsonl"
        if path.is_file():
            steps = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            val = [(s["step"], s["val_loss"]) for s in steps if s.get("val_loss") is not None]
            if val:
                curves.append((row, val))
    if not curves:
        return None
    plt, fig, ax = plots._figure(height=3.2)
    for (row, val), color in zip(curves, (plots.GREEN, plots.BLUE, plots.ORANGE)):
        ax.plot(*zip(*val), marker="o", markersize=3, color=color, label=f"trial {row['number']} ({row['value']:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.legend(loc="upper right")
    return plots._svg(plt, fig)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>hone sweep {{ r.name }}</title>
<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse}
td,th{padding:3px 10px;border-bottom:1px solid #e3e5e8;text-align:right}th{text-align:left}
.best{background:#eef8f1}</style></head><body>
<h1>Sweep {{ r.name }}</h1>
<p>{{ trials|length }} trials; {{ spent }} of trial time; selection by validation loss only.
{% if test %}The best trial (trial {{ test.trial }}) was scored <b>once</b> on the test split {{ test.data }}
after selection: {{ test.metric }} base {{ test.base }}, tuned {{ test.tuned }}{% if test.interval %} (difference
{{ '%.3f' % test.difference }}, 95% interval {{ '%.3f' % test.interval[0] }} to
{{ '%.3f' % test.interval[1] }}){% endif %}, n={{ test.n }}.
{% else %}No test split was scored: the best trial is unscored on held-out data.{% endif %}</p>
{% if r.best_config %}<p>Best settings, ready for <code>hone train {{ r.best_config }}</code>:
<code>{{ r.best_params }}</code></p>{% endif %}
<h2>Trials</h2><table><tr><th>trial</th><th>state</th><th>validation loss</th>
{% for p in params %}<th>{{ p }}</th>{% endfor %}<th>steps</th><th>seconds</th></tr>
{% for t in trials %}<tr class="{{ 'best' if t.number == best }}"><td>{{ t.number }}</td><td>{{ t.state }}</td>
<td>{{ '%.4f' % t.value if t.value is not none else '' }}</td>
{% for p in params %}<td>{{ fmt(t.params.get(p)) }}</td>{% endfor %}
<td>{{ t.steps or '' }}</td><td>{{ t.seconds or '' }}</td></tr>
{% endfor %}</table>
{% for title, svg in figures %}{% if svg %}<h2>{{ title }}</h2>{{ svg|safe }}{% endif %}{% endfor %}
</body></html>"""


def write_sweep_report(result: SweepResult, study) -> Path:
    import jinja2

    params = sorted({p for t in result.trials for p in t["params"]})
    best = min((t for t in result.trials if t["state"] == "complete" and t["value"] is not None),
               key=lambda t: t["value"], default=None)
    figures = [("Optimisation history", history_plot(result.trials)),
               ("Parameter importances", importance_plot(importances(study))),
               ("Validation loss of the best trials", curves_plot(result.trials))]
    html = jinja2.Environment(autoescape=True).from_string(PAGE).render(
        r=result, trials=result.trials, params=params, best=best["number"] if best else None, test=result.test,
        figures=figures, spent=f"{result.spent_seconds / 60:.1f} min",
        fmt=lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else v))
    path = result.folder / "report.html"
    atomic.write_text(path, html)
    return path


def best_config(name: str) -> RunConfig:
    """The best trial's settings as a RunConfig (`hone train` reads the same best.yaml)."""
    import yaml

    path = sweep_folder(name) / "best.yaml"
    return build_config(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
