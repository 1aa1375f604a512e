"""How a finished run is shown: a results table, answers side by side, and what to do next."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from hone.objectives.lifecycle import RunResult

# How each metric reads in a results table.
SCORE_NAMES = {"perplexity": "perplexity on held-out text", "accuracy": "accuracy", "entity_f1": "entity F1",
               "pairwise_accuracy": "pairwise accuracy (chosen ranked above rejected)",
               "mean_reward": "mean reward of greedy answers",
               "weighted validation loss": "validation loss, weighted by the mixture"}
EARLY = {"early_stopping": "stopped early (validation loss stopped improving)"}


def _clip(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def score_text(value, share: bool) -> str:
    """A score as a reader expects it: a share as a percentage, anything else (perplexity, loss, reward) as a number."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.1%}" if share else f"{value:.4g}"


def print_summary(result: RunResult, console: Console, samples: int | None = None) -> None:
    """The results table of any objective, the answers side by side (sft), the recipe and what to do next."""
    results = result.record.get("results", {})
    table = Table(title=f"Results ({result.objective} + {result.method})", header_style="bold")
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    teacher = result.teacher_score is not None  # distill: the teacher on the same test items
    if teacher:
        table.add_column("teacher", justify="right")
    if result.tuned_score is not None:
        split = results.get("split") or "test"
        n = (result.record.get("data") or {}).get("n_test") or ""
        name = SCORE_NAMES.get(result.metric or "", result.metric or "score")
        better = result.base_score is None or ((result.tuned_score < result.base_score) if result.lower_is_better
                                              else (result.tuned_score > result.base_score))
        table.add_row(f"{name} on {n} {split} items".replace("  ", " "), score_text(result.base_score, result.share),
                      f"[{'bold green' if better else 'bold red'}]{score_text(result.tuned_score, result.share)}",
                      *([score_text(result.teacher_score, result.share)] if teacher else []))
    if result.baseline:
        table.caption = f"base: {result.baseline}"
    for row in result.rows:
        table.add_row(row.label, score_text(row.base, row.share), score_text(row.tuned, row.share),
                      *([score_text(row.teacher, row.share)] if teacher else []))
    if results.get("items"):
        items = results["items"]
        table.add_row("items improved / regressed / unchanged", "",
                      f"{items['improved']} / {items['regressed']} / {items['unchanged']}")
    if result.forgetting:
        f = result.forgetting
        verdict = "[green]passed[/green]" if f["passed"] else "[bold red]FAILED[/bold red]"
        table.add_row(f"general-skills probe ({f['n']} items)", f"{f['base']:.1f}%", f"{f['tuned']:.1f}%")
        table.add_row("forgetting (drop, 95% CI)", "",
                      f"{f['drop']:+.1f} pts [{f['ci'][0]:+.1f}, {f['ci'][1]:+.1f}]; gate {f['gate']:g}: {verdict}")
    losses = result.losses
    if losses.get("first_loss") is not None and losses.get("train_loss") is not None:
        table.add_row("training loss, first -> last step", "",
                      f"{losses['first_loss']:.4g} -> {losses['train_loss']:.4g}")
    if losses.get("val_loss") is not None:
        best = (f"; best {losses['best_val_loss']:.4f} at step {losses['best_step']}"
                if losses.get("best_step") is not None and losses.get("best_val_loss") != losses["val_loss"] else "")
        table.add_row("validation loss", "", f"{losses['val_loss']:.4f}{best}")
    rate = f", {results['tokens_per_s']:.0f} tok/s" if results.get("tokens_per_s") else ""
    stop = f", {EARLY[result.stopped_by]}" if result.stopped_by in EARLY else ""
    table.add_row("training", "", f"{result.steps} steps, {result.train_seconds:.0f} s{rate}{stop}")
    table.add_row("total wall time", "", f"{result.total_seconds:.0f} s")
    console.print(table)
    if results.get("overfitting_alarms"):
        console.print(f"[yellow]Overfitting alarm at steps {', '.join(map(str, results['overfitting_alarms']))}: "
                      "training loss fell while validation loss rose (docs/safeguards.md).[/yellow]")
    _print_samples(result, console, samples)
    print_recipe(result.record, console)
    hone = hone_command()
    if result.forgetting_failed:
        assert result.forgetting is not None  # it failed, so it ran
        console.print(f"[bold red]Forgetting check failed[/bold red]: general-skills accuracy fell "
                      f"{result.forgetting['drop']:.1f} points (gate {result.forgetting['gate']:g}). Try a lower "
                      "--lr, --set train.replay=0.2 or --set train.kl_to_base=0.5 (docs/forgetting.md).")
    console.print(f"\nRun folder: [bold]{result.run_dir}[/bold] ({result.artifact or 'adapter'}/ holds the model; "
                  "report.html shows the run)")
    if result.objective in ("sft", "classify", "pretrain", "mixture", "dpo", "orpo", "simpo", "grpo", "distill"):
        console.print(f"Chat with the tuned model:  {hone} chat {result.run_dir}", highlight=False)
        console.print(f"Generate from a file:       {hone} generate {result.run_dir} --file prompts.jsonl",
                      highlight=False)


def _print_samples(result: RunResult, console: Console, samples: int | None) -> None:
    if not result.samples or samples == 0:
        return
    side = Table(title="Test prompts side by side", show_lines=True, header_style="bold")
    for column in ("prompt", "base", "tuned", "expected"):
        side.add_column(column, overflow="fold", ratio=1)
    for sample in result.samples[:samples or len(result.samples)]:
        mark = "[green]✓[/green] " if sample["correct"] else "[red]✗[/red] "
        side.add_row(_clip(sample["prompt"], 160), _clip(sample["base"] or "-", 160),
                     mark + _clip(sample["tuned"], 160), _clip(sample["expected"]))
    console.print(side)


def print_recipe(record: dict, console: Console) -> None:
    """One line: which recipe ran and whether hone advised it or the user forced it."""
    recipe = record.get("recipe")
    if recipe:
        console.print(f"Recipe: {recipe.get('objective')} + {recipe.get('method')} "
                      f"({'advised by hone' if recipe.get('source') == 'advised' else 'chosen by you'}; "
                      "why: run.json `recipe`, hone runs show)", highlight=False)


def hone_command() -> str:
    """How the user can call hone again: `hone` when it is on PATH, else the path they ran
    (after `make demo`, `.venv/bin/hone`)."""
    import os
    import shutil
    import sys

    ran = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("hone")
    if not ran.endswith("hone") or (on_path and os.path.abspath(on_path) == ran):
        return "hone"
    relative = os.path.relpath(ran)
    return relative if not relative.startswith("..") else ran


