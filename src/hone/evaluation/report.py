"""`runs/<id>/report.html`: one self-contained page about a run (inline CSS and SVG, no network).

Sections: summary, configuration, data, training curves, metrics base vs tuned with intervals,
forgetting probe, worst regressions, side-by-side samples, edge-case suite, judge, cost. Metrics
come from `hone eval`'s eval.json when there is one, else they are computed from the answers the
training run saved (run.json) against its test file: text metrics need no model.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from hone import atomic
from hone.data.load import load_chat_records
from hone.errors import UserError
from hone.evaluation import plots
from hone.evaluation.compare import compare_answers
from hone.evaluation.metrics import pick_metrics
from hone.version import __version__

SECTIONS = {"summary": "Summary", "config": "Configuration", "data": "Data", "training": "Training curves",
            "metrics": "Metrics: base vs tuned", "forgetting": "Forgetting probe",
            "regressions": "Worst regressions", "samples": "Side by side", "suite": "Edge-case suite",
            "judge": "LLM judge", "cost": "Cost"}
EARLY_STOPS = ("early_stopping", "early_stop", "early_stopped", "patience")


def read_steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluation_of(run: Path, record: dict, config: dict) -> dict | None:
    """The base-vs-tuned evaluation: eval.json from `hone eval`, else rebuilt from the run's saved answers."""
    saved = run / "eval.json"
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    tuned = record.get("tuned_answers")
    test = (record.get("data") or {}).get("test")
    if not tuned or not test:
        return None
    if not Path(test).is_file():
        return {"missing_test_file": test}
    examples = load_chat_records(Path(test))
    system = (config.get("data") or {}).get("system_prompt")
    if system:
        for e in examples:
            if e.messages[0]["role"] != "system":
                e.messages.insert(0, {"role": "system", "content": system})
    if len(examples) != len(tuned):
        return {"missing_test_file": f"{test} (now {len(examples)} items; the run answered {len(tuned)})"}
    references = [e.answer or "" for e in examples]
    metrics, primary = pick_metrics(references)
    base = record.get("base_answers")
    comparison = compare_answers(metrics, primary, references, tuned, base, seed=config.get("train", {}).get("seed", 0))
    return {**comparison.to_json(), "prompts": [e.prompt_messages[-1]["content"] for e in examples],
            "references": references, "tuned_answers": tuned, "base_answers": base,
            "suite": None, "judge": None}


def fmt_value(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1%}" if percent else f"{value:.2f}"


def fmt_diff(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:+.1f} pp" if percent else f"{value:+.2f}"


def metric_rows(evaluation: dict) -> list[dict]:
    rows = []
    for m in evaluation.get("metrics", []):
        interval = m.get("interval")
        verdict = "neutral"
        if interval and m.get("base") is not None:
            good = interval[0] > 0 if m["higher_is_better"] else interval[1] < 0
            bad = interval[1] < 0 if m["higher_is_better"] else interval[0] > 0
            verdict = "good" if good else "bad" if bad else "neutral"
        rows.append({"name": m["name"], "description": m["description"], "primary": m["name"] == evaluation["primary"],
                     "base": fmt_value(m.get("base"), m["percent"]), "tuned": fmt_value(m["tuned"], m["percent"]),
                     "difference": fmt_diff(m.get("difference"), m["percent"]),
                     "interval": (f"{fmt_diff(interval[0], m['percent'])} … {fmt_diff(interval[1], m['percent'])}"
                                  if interval else "–"),
                     "outcomes": (f"{m['improved']} / {m['regressed']} / {m['unchanged']}"
                                  if m.get("base") is not None else "–"),
                     "verdict": verdict, "lower_better": not m["higher_is_better"]})
    return rows


def item_table(evaluation: dict, indices: list[int]) -> list[dict]:
    prompts, refs = evaluation.get("prompts") or [], evaluation.get("references") or []
    base, tuned = evaluation.get("base_answers"), evaluation.get("tuned_answers") or []
    base_items, tuned_items = evaluation.get("base_items"), evaluation.get("tuned_items") or []
    return [{"index": i + 1, "prompt": prompts[i] if i < len(prompts) else "",
             "reference": refs[i] if i < len(refs) else None,
             "base": base[i] if base else None, "tuned": tuned[i] if i < len(tuned) else "",
             "base_score": base_items[i] if base_items else None,
             "tuned_score": tuned_items[i] if i < len(tuned_items) else None} for i in indices]


def worst_regressions(evaluation: dict, limit: int = 5) -> list[dict]:
    """Items the tuned model does worse on, worst first: ordered by the change in the primary metric,
    ties broken by the next metrics in turn (a binary primary metric leaves many ties)."""
    if not evaluation.get("base_items"):
        return []
    per_item = evaluation.get("per_item") or {evaluation["primary"]: {"tuned": evaluation["tuned_items"],
                                                                      "base": evaluation["base_items"]}}
    order = [m for m in evaluation["metrics"] if m["name"] in per_item and per_item[m["name"]]["base"]]
    order.sort(key=lambda m: m["name"] != evaluation["primary"])
    n = len(evaluation["tuned_items"])

    def change(i: int) -> tuple:
        """Signed improvement per metric, each scaled to comparable units (shares; BLEU/chrF /100)."""
        return tuple((1 if m["higher_is_better"] else -1)
                     * (per_item[m["name"]]["tuned"][i] - per_item[m["name"]]["base"][i])
                     / (1 if m["percent"] else 100) for m in order if m["name"] != "perplexity")

    worse = sorted((change(i), i) for i in range(n) if next((d for d in change(i) if d), 0) < 0)
    rows = item_table(evaluation, [i for _, i in worse[:limit]])
    for row, (delta, _) in zip(rows, worse):
        name, value = next((m["name"], d) for m, d in zip([m for m in order if m["name"] != "perplexity"], delta) if d)
        row["worse_on"] = f"{name} {value * 100:+.1f}" + (" pp" if name != "bleu" and name != "chrf" else " pts")
    return rows


def sample_indices(evaluation: dict, count: int = 6) -> list[int]:
    """Spread over the test set, with at least one tuned miss and one improvement when there are some."""
    tuned, base = evaluation.get("tuned_items") or [], evaluation.get("base_items")
    n = len(evaluation.get("tuned_answers") or [])
    if n == 0:
        return []
    picks = sorted({round(i * (n - 1) / max(1, count - 1)) for i in range(min(count, n))})
    best = max(tuned) if tuned else 0
    misses = [i for i, s in enumerate(tuned) if s < best and i not in picks]
    gains = [i for i in range(len(tuned)) if base and tuned[i] > base[i] and i not in picks]
    for extra, slot in ((misses, -1), (gains, -2)):
        if extra and len(picks) >= -slot:
            picks[slot] = extra[0]
    return sorted(set(picks))


def forgetting_view(record: dict) -> dict | None:
    probe = record.get("forgetting") or (record.get("results") or {}).get("forgetting")
    if not isinstance(probe, dict):
        return None
    view: dict[str, Any] = {
        "raw": {k: v for k, v in probe.items() if k not in ("base", "tuned", "drop", "ci", "gate", "passed")}}
    for key in ("base", "tuned"):
        value = probe.get(key)
        view[key] = f"{value:.1%}" if isinstance(value, (int, float)) and value <= 1 else value
    drop, ci = probe.get("drop"), probe.get("ci")
    view["drop"] = f"{drop:+.1f} points" if isinstance(drop, (int, float)) else drop
    view["ci"] = f"{ci[0]:+.1f} … {ci[1]:+.1f}" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ci
    view["gate"], view["passed"] = probe.get("gate"), probe.get("passed")
    return view


def cost_rows(record: dict, steps: list[dict]) -> list[tuple[str, str]]:
    results = record.get("results") or {}
    rows = []
    if results.get("tokens") is not None:
        rows.append(("tokens trained", f"{results['tokens']:,}"))
    if results.get("steps") is not None:
        rows.append(("optimizer steps", f"{results['steps']:,}" + (f" (stopped by {results['stopped_by']})"
                                                                   if results.get("stopped_by") else "")))
    if record.get("train_seconds") is not None:
        rows.append(("training wall time", _duration(record["train_seconds"])))
    if record.get("total_seconds") is not None:
        rows.append(("total wall time (load, evaluate, train)", _duration(record["total_seconds"])))
    if results.get("tokens_per_s") is not None:
        rows.append(("throughput", f"{results['tokens_per_s']:,.0f} tokens/s"))
    if results.get("peak_memory_mb") is not None:
        kind = results.get("peak_memory_kind", "resident")
        rows.append(("peak memory", f"{results['peak_memory_mb']:,.0f} MB ({kind})"))
    if results.get("trainable_parameters") is not None:
        total = results.get("total_parameters") or 0
        share = f" of {total:,} ({results['trainable_parameters'] / total:.2%})" if total else ""
        rows.append(("trainable parameters", f"{results['trainable_parameters']:,}{share}"))
    if record.get("hardware"):
        rows.append(("hardware", record["hardware"]))
    return rows


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def training_view(record: dict, steps: list[dict]) -> dict:
    results = record.get("results") or {}
    val = [s for s in steps if s.get("val_loss") is not None]
    best = min(val, key=lambda s: s["val_loss"]) if val else None
    best_step = results.get("best_step") or (best["step"] if best else None)
    stopped_by = results.get("stopped_by")
    early = stopped_by in EARLY_STOPS or results.get("early_stopped_at") is not None
    stop_step = results.get("early_stopped_at") or (steps[-1]["step"] if early and steps else None)
    alarms = record.get("alarms") or results.get("alarms") or results.get("overfitting") or []
    sentences = []
    if best:
        sentences.append(f"Best validation loss {best['val_loss']:.4f} at step {best['step']}.")
    if stopped_by:
        sentences.append(f"Training stopped by {stopped_by.replace('_', ' ')}"
                         + (f" at step {stop_step}." if stop_step else "."))
    if results.get("train_loss") is not None:
        sentences.append(f"Final training loss {results['train_loss']:.4f}.")
    return {"sentences": sentences,
            "loss_svg": plots.loss_curve(steps, best_step, stop_step, "early stop" if early else "stopped"),
            "lr_svg": plots.lr_curve(steps), "best": best, "stopped_by": stopped_by, "early": early,
            "stop_step": stop_step, "alarms": alarms if isinstance(alarms, list) else [alarms],
            "final_loss": results.get("train_loss"), "val_loss": results.get("val_loss")}


def recipe_line(recipe: dict | None) -> str | None:
    """'classify + lora (advised by hone: ...)' or '(forced: ...)': which recipe produced the run."""
    if not recipe:
        return None
    source = recipe.get("source")
    why = (recipe.get("reasons") or {}).get("objective", "")
    how = {"advised": "advised by hone", "forced": "chosen by the user"}.get(source or "", source or "not recorded")
    return f"{recipe.get('objective')} + {recipe.get('method')} ({how}{': ' + why if why else ''})"


def build_context(run: Path) -> dict:
    record = json.loads((run / "run.json").read_text(encoding="utf-8")) if (run / "run.json").is_file() else {}
    config_text = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else ""
    config = yaml.safe_load(config_text) or {}
    steps = read_steps(run)
    evaluation = evaluation_of(run, record, config)
    usable = evaluation if evaluation and "metrics" in evaluation else None
    headline = None
    if usable:
        primary = next(m for m in usable["metrics"] if m["name"] == usable["primary"])
        headline = {"name": primary["name"], "base": fmt_value(primary.get("base"), primary["percent"]),
                    "tuned": fmt_value(primary["tuned"], primary["percent"]),
                    "interval": metric_rows({"metrics": [primary], "primary": primary["name"]})[0]["interval"],
                    "verdict": metric_rows({"metrics": [primary], "primary": primary["name"]})[0]["verdict"],
                    "n": usable["n"]}
    train = config.get("train") or {}
    method = config.get("method") or {}
    config_rows = [("base model", record.get("base_model") or (config.get("model") or {}).get("name")),
                   ("method", method.get("name", "") + (f", r {method['lora_r']}, alpha {method['lora_alpha']}, "
                                                       f"{method.get('target_modules', '')}"
                                                       if method.get("name") == "lora" else "")),
                   ("objective", record.get("objective", "sft")),
                   ("recipe", recipe_line(record.get("recipe"))),
                   ("learning rate", f"{train.get('lr'):g}" if train.get("lr") else "method default"),
                   ("schedule", f"{train.get('scheduler', '')}, warmup {train.get('warmup_ratio', 0):.0%}"),
                   ("length", f"{train['max_steps']} steps" if train.get("max_steps") else
                    f"{train.get('epochs')} epochs"
                    + (f", budget {train['time_budget']:g} s" if train.get("time_budget") else "")),
                   ("batch", f"{train.get('batch_size')} (micro-batch {train.get('micro_batch_size')})"),
                   ("precision", train.get("precision")), ("seed", train.get("seed"))]
    return {
        "title": config.get("name") or run.name, "run": str(run), "record": record,
        "status": record.get("status", "unknown"), "generated": time.strftime("%Y-%m-%d %H:%M"),
        "version": __version__, "sections": SECTIONS, "headline": headline,
        "config_rows": [(k, v) for k, v in config_rows if v not in (None, "")], "config_yaml": config_text,
        "data": record.get("data") or {}, "data_report": record.get("data_report"),
        "system_prompt": (config.get("data") or {}).get("system_prompt"),
        "training": training_view(record, steps),
        "evaluation": evaluation, "metric_rows": metric_rows(usable) if usable else [],
        "difference_svg": plots.difference_plot(usable["metrics"]) if usable else None,
        "forgetting": forgetting_view(record),
        "regressions": worst_regressions(usable) if usable else [],
        "samples": item_table(usable, sample_indices(usable)) if usable else [],
        "suite": (usable or {}).get("suite"), "judge": (usable or {}).get("judge"),
        "cost": cost_rows(record, steps), "n_steps": len(steps),
    }


def write_report(run: Path) -> Path:
    """Render `run/report.html` from what the run folder holds; returns its path."""
    import jinja2

    run = Path(run)
    if not (run / "run.json").is_file() and not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no run.json)")
    env = jinja2.Environment(loader=jinja2.PackageLoader("hone.evaluation", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    html = env.get_template("report.html.j2").render(**build_context(run))
    path = run / "report.html"
    atomic.write_text(path, html)
    return path
