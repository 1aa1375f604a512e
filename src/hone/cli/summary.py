"""How a finished run is shown: a results table, answers side by side, and what to do next."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from hone.objectives.sft import SFTResult


def summary_json(result: SFTResult) -> dict:
    """The run summary as plain data (the last line of `--json` output)."""
    return {
        "metric": result.metric,
        "base_score": result.base.score if result.base else None,
        "tuned_score": result.tuned.score if result.tuned else None,
        "n_test": len(result.test),
        "train_seconds": round(result.train_seconds, 1),
        "total_seconds": round(result.total_seconds, 1),
        "val_loss": result.record.get("results", {}).get("val_loss"),
        "steps": result.record.get("results", {}).get("steps"),
        "run_dir": str(result.run_dir),
        "forgetting": result.forgetting,
        "recipe": result.record.get("recipe"),
    }


def _clip(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_summary(result: SFTResult, console: Console, samples: int = 4) -> None:
    results = result.record.get("results", {})
    table = Table(title="Results", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    if result.metric and result.tuned:
        base = f"{result.base.score:.1%}" if result.base else "-"
        table.add_row(f"{result.metric} on {len(result.test)} test items", base, f"[bold green]{result.tuned.score:.1%}")
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
    if results.get("val_loss") is not None:
        table.add_row("validation loss (per trained token)", "", f"{results['val_loss']:.4f}")
    table.add_row("training", "", f"{results.get('steps')} steps, {result.train_seconds:.0f} s, "
                  f"{results.get('tokens_per_s', 0):.0f} tok/s")
    table.add_row("total wall time", "", f"{result.total_seconds:.0f} s")
    console.print(table)

    if result.tuned and samples:
        side = Table(title="Test prompts side by side", show_lines=True, header_style="bold")
        for column in ("prompt", "base", "tuned", "expected"):
            side.add_column(column, overflow="fold", ratio=1)
        for i in _sample_indices(result, samples):
            example = result.test[i]
            mark = "[green]✓[/green] " if result.tuned.scores[i] else "[red]✗[/red] "
            base = result.base.answers[i] if result.base else "-"
            side.add_row(_clip(example.prompt_messages[-1]["content"], 160), _clip(base, 160),
                         mark + _clip(result.tuned.answers[i], 160), _clip(example.answer or ""))
        console.print(side)

    print_recipe(result.record, console)
    hone = hone_command()
    if result.forgetting and not result.forgetting["passed"]:
        console.print(f"[bold red]Forgetting check failed[/bold red]: general-skills accuracy fell "
                      f"{result.forgetting['drop']:.1f} points (gate {result.forgetting['gate']:g}). Try a lower "
                      "--lr, --set train.replay=0.2 or --set train.kl_to_base=0.5 (docs/forgetting.md).")
    console.print(f"\nRun folder: [bold]{result.run_dir}[/bold]")
    console.print(f"Chat with the tuned model:  {hone} chat {result.run_dir}", highlight=False)
    console.print(f"Generate from a file:       {hone} generate {result.run_dir} --file prompts.jsonl", highlight=False)


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


def _sample_indices(result: SFTResult, samples: int) -> list[int]:
    """Spread samples over the test split, and include a tuned miss when there is one."""
    n = len(result.test)
    picks = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(samples)}) if n else []
    misses = [i for i, s in enumerate(result.tuned.scores) if not s and i not in picks]
    if misses and picks:
        picks[-1] = misses[0]
    return sorted(picks)


# Objectives other than sft: what their score means, and whether higher is better.
SCORE_NAMES = {"perplexity": ("perplexity on held-out text", False),
               "accuracy": ("accuracy", True), "entity_f1": ("entity F1", True),
               "pairwise_accuracy": ("pairwise accuracy (chosen ranked above rejected)", True),
               "mean_reward": ("mean reward of greedy answers", True),
               "weighted validation loss": ("validation loss, weighted by the mixture", False)}


def objective_summary_json(result) -> dict:
    """A non-sft run's summary as plain data (the last line of `--json` output)."""
    return {"objective": result.objective, **result.results, "recipe": result.record.get("recipe"),
            "run_dir": str(result.run_dir),
            "train_seconds": round(result.train_seconds, 1), "total_seconds": round(result.total_seconds, 1)}


def print_objective_summary(result, console: Console) -> None:
    """Results table of a pretrain, classify, ner, preference, reward, grpo or mixture run."""
    results = result.results
    table = Table(title=f"Results ({result.objective})", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    name, higher = SCORE_NAMES.get(results.get("metric"), (results.get("metric"), True))
    split = results.get("split")
    if results.get("tuned_score") is not None:
        base = results.get("base_score")
        better = base is None or (results["tuned_score"] > base if higher else results["tuned_score"] < base)
        colour = "bold green" if better else "bold red"
        table.add_row(f"{name}{f' ({split})' if split else ''}", "-" if base is None else f"{base:.4g}",
                      f"[{colour}]{results['tuned_score']:.4g}")
    if results.get("baseline"):
        table.caption = f"base: {results['baseline']}"
    if results.get("tuned_margin") is not None:
        table.add_row("mean log-prob margin, chosen - rejected", f"{results['base_margin']:.4g}",
                      f"{results['tuned_margin']:.4g}")
    if results.get("tuned_macro_f1") is not None:
        table.add_row("macro-F1", "", f"{results['tuned_macro_f1']:.4g}")
    if results.get("tuned_word_accuracy") is not None:
        table.add_row("word accuracy", "", f"{results['tuned_word_accuracy']:.4g}")
    for source, scores in (results.get("sources") or {}).items():
        table.add_row(f"  {source} (weight {scores['weight']:g}) val loss", f"{scores['base_val_loss']}",
                      f"{scores['tuned_val_loss']}")
    if results.get("first_loss") is not None and results.get("train_loss") is not None:
        table.add_row("training loss, first -> last step", "", f"{results['first_loss']:.4g} -> {results['train_loss']:.4g}")
    if results.get("first_train_reward") is not None:
        table.add_row("training reward, first -> last step", "",
                      f"{results['first_train_reward']:.4g} -> {results['last_train_reward']:.4g}")
    rate = f", {results['tokens_per_s']:.0f} tok/s" if results.get("tokens_per_s") else ""
    table.add_row("training", "", f"{results.get('steps')} steps, {result.train_seconds:.0f} s{rate}")
    table.add_row("total wall time", "", f"{result.total_seconds:.0f} s")
    console.print(table)
    print_recipe(result.record, console)
    console.print(f"\nRun folder: [bold]{result.run_dir}[/bold] ({results.get('artifact', 'adapter')}/ holds the model)")
