"""The `hone` command: parses arguments, calls one library function, prints."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from hone.cli.data import data_app
from hone.cli.export import export_command
from hone.cli.feedback import feedback_app
from hone.cli.kb import kb_app
from hone.cli.lifecycle import Lifecycle, group_help
from hone.cli.monitor import monitor_command
from hone.cli.plan import plan_command
from hone.cli.promote import promote_command
from hone.cli.runs import runs_app
from hone.cli.serve import keys_app, serve as serve_command, worker as worker_command
from hone.cli.sweep import merge_command, sweep_command
from hone.errors import Interrupted, UserError

app = typer.Typer(cls=Lifecycle, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models on your own hardware.")
models_app = typer.Typer(no_args_is_help=True, help="Base models.")
config_app = typer.Typer(no_args_is_help=True, help="Run configuration.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(kb_app, name="kb")
app.add_typer(keys_app, name="keys")
app.add_typer(feedback_app, name="feedback")
app.command("serve")(serve_command)
app.command("worker")(worker_command)
out = Console()
err = Console(stderr=True)
app.command("plan")(plan_command)
app.command("export")(export_command)
app.command("monitor")(monitor_command)
app.command("promote")(promote_command)
app.command("sweep")(sweep_command)
app.command("merge")(merge_command)


@app.callback()
def _global(db: Optional[str] = typer.Option(None, "--db", envvar="HONE_DB", show_envvar=True,
                                             help="Run registry database URL (default: SQLite under the hone home)")):
    """Fine-tune language models on your own hardware."""
    import os

    if db:
        os.environ["HONE_DB"] = db


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config (optional)"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Training data (any chat-like shape; see hone data check)"),
    data_format: Optional[str] = typer.Option(None, "--format", help="Force the data shape (default: detected)"),
    strict: Optional[bool] = typer.Option(None, "--strict", help="Stop at the first bad record instead of skipping it"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data"),
    test: Optional[Path] = typer.Option(None, "--test", help="Test data, scored base vs tuned"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model"),
    method: Optional[str] = typer.Option(None, "--method", help="Adaptation method (`hone methods` lists them)"),
    objective: Optional[str] = typer.Option(None, "--objective", help="auto (default: chosen from the data), sft, pretrain, classify, ner, dpo, orpo, simpo, reward, grpo, mixture or distill"),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="With --objective distill: the model the student learns from, a run (folder, id, NAME:VERSION, latest) or a model"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for initialisation, data order and dropout (default 42)"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Effective batch size"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training budget in seconds"),
    save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Checkpoint every N steps (default once per epoch)"),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System message for examples without one"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder"),
    name: Optional[str] = typer.Option(None, "--name", help="Run name"),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Any config field: section.field=value"),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run (folder, id or 'latest')"),
    continue_from: Optional[str] = typer.Option(None, "--continue", help="Train the next version of a tuned run (folder, NAME:VERSION, NAME@TAG) from its weights, replaying its training data"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train with N data-parallel processes"),
    launcher: str = typer.Option("torchrun", "--launcher", help="How --nproc starts them: torchrun or accelerate"),
    accelerate_config: str = typer.Option("ddp", "--accelerate-config", help="With --launcher accelerate: ddp, fsdp2, deepspeed-zero2, deepspeed-zero3 or a YAML file"),
):
    """Fine-tune a model on your data; without --objective hone reads the data and picks the recipe (hone plan)."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch(nproc, launcher, accelerate_config))
    import hone

    result = hone.train(config, resume=resume, console=err, sets=sets, data=data, validation=validation, test=test,
                        model=model, method=method, objective=objective, lr=lr, epochs=epochs, max_steps=max_steps,
                        batch_size=batch_size, time_budget=time_budget, save_steps=save_steps, seed=seed,
                        system_prompt=system_prompt, format=data_format, strict=strict, output=output, name=name,
                        teacher=teacher, continue_from=continue_from)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one summary per launch: rank 0 evaluated, saved and recorded the run
    _print_result(result, as_json)


def _print_result(result, as_json: bool) -> None:
    from hone.cli.summary import print_summary

    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print_summary(result, out)
    if result.forgetting_failed:
        raise typer.Exit(3)  # the run is saved, but it failed its forgetting check: scripts and CI must see it


@app.command()
def demo(
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line"),
    train_seconds: Optional[float] = typer.Option(None, "--train-seconds", help="Training budget in seconds"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder"),
):
    """Fine-tune the embedded model on the bundled order-extraction task; show base vs tuned."""
    from hone.objectives.demo import DEMO_TRAIN_SECONDS, run_demo

    err.print("[bold]hone demo[/bold]: teach SmolLM2-135M to extract orders as JSON "
              f"({train_seconds or DEMO_TRAIN_SECONDS:.0f} s of LoRA training on this machine)")
    _print_result(run_demo(train_seconds or DEMO_TRAIN_SECONDS, output, console=err), as_json)


@app.command()
def chat(run: str = typer.Argument(..., help="Run folder, run id or 'latest'"),
         system: Optional[str] = typer.Option(None, "--system", help="System message"),
         max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
         temperature: float = typer.Option(0.0, "--temperature"),
         kb: Optional[str] = typer.Option(None, "--kb", help="Answer from a knowledge base (NAME or NAME:VERSION): passages in the prompt, their ids as sources"),
         k: int = typer.Option(4, "--k", min=1, help="With --kb: passages per question")):
    """Chat with a tuned model (streaming). Empty line or Ctrl-D quits."""
    from hone.evaluation.predict import Predictor, chat_loop
    from hone.hardware import pick_hardware

    knowledge = None
    if kb is not None:
        from hone.kb import KnowledgeBase

        knowledge = KnowledgeBase(kb)   # before the model loads: a wrong name fails at once
    predictor = Predictor(run, pick_hardware().device)
    if knowledge is not None and predictor.kind == "classifier":
        raise UserError("--kb: a classifier answers with a label and reads no passages; use a generative run or model")
    if predictor.kind == "classifier":
        err.print(f"[dim]A classifier: it answers with one of {len(predictor.labels)} labels "
                  f"({', '.join(predictor.labels[:8])}{', …' if len(predictor.labels) > 8 else ''}).[/dim]",
                  highlight=False)
    if system is None and (system := predictor.system_prompt):
        err.print(f"[dim]System prompt from the training data: {system!r} (--system '' for none)[/dim]",
                  highlight=False)
    if knowledge is not None:
        err.print(f"[dim]Answering from knowledge base {knowledge.name} ({len(knowledge)} chunks, {k} passages "
                  "per question).[/dim]", highlight=False)
    err.print("[dim]Type a message; an empty line quits.[/dim]")
    write = lambda text: out.print(text, end="", markup=False, highlight=False)  # noqa: E731
    chat_loop(predictor, _read_line, write, system, max_new_tokens, temperature, knowledge, k)


def _read_line() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None


@app.command()
def generate(run: str = typer.Argument(..., help="Run folder, run id or 'latest'"),
             prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One user message"),
             file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL of chat examples or {\"prompt\": ...}"),
             system: Optional[str] = typer.Option(None, "--system", help="System message"),
             max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
             as_json: bool = typer.Option(False, "--json", help="One JSON object per answer")):
    """Answer one prompt or every prompt in a file with a tuned model (a classifier answers with its label)."""
    from hone.evaluation.predict import Predictor, read_prompts
    from hone.hardware import pick_hardware

    predictor = Predictor(run, pick_hardware().device)
    if system is None:
        system = predictor.system_prompt  # ask the way the model was taught
    conversations = read_prompts(prompt, file, system)
    answers = predictor.answers(conversations, max_new_tokens)
    for conversation, answer in zip(conversations, answers):
        if as_json:
            print(json.dumps({"prompt": conversation[-1]["content"], "answer": answer}, ensure_ascii=False))
        else:
            out.print(answer, markup=False, highlight=False)


def _relaunch(nproc: int, launcher: str, config: str) -> int:
    """Run this same `hone train` command as `nproc` processes; return their exit code."""
    import subprocess

    from hone.launch import launch_command

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--nproc", "--launcher", "--accelerate-config"):
            skip = True
        elif not arg.startswith(("--nproc=", "--launcher=", "--accelerate-config=")):
            argv.append(arg)
    command, env = launch_command(nproc, argv, launcher, config)
    return subprocess.run(command, env=env).returncode


@app.command("methods")
def methods_list(as_json: bool = typer.Option(False, "--json")):
    """Adaptation methods: what each trains, its default learning rate, where it applies."""
    from hone.methods import METHODS
    from hone.objectives.registry import OBJECTIVES

    rows: list[dict[str, Any]] = [{"name": m.name, "trains": m.trains, "default_lr": m.default_lr, "saves": m.saves,
             "objectives": sorted(o.name for o in OBJECTIVES.values() if m.applies(o.head is not None, o.own_loop)),
             "choose_when": m.choose_when} for m in METHODS.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(header_style="bold")
    for column in ("method", "trains", "default lr", "choose when"):
        table.add_column(column, no_wrap=column in ("method", "default lr"))
    for row in rows:
        table.add_row(row["name"], row["trains"], f"{row['default_lr']:g}", row["choose_when"])
    out.print(table)


@app.command("eval")
def eval_command(
    target: str = typer.Argument(..., help="Run folder, run id or 'latest'; or a model (catalogue name, HF folder, .gguf)"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Test data; scored against each last assistant message (default: the run's test file)"),
    base: Optional[str] = typer.Option(None, "--base", help="Baseline model (default: the run's base model)"),
    no_base: bool = typer.Option(False, "--no-base", help="Score only the model, no baseline"),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric name or package.module:function (repeatable; default: chosen from the references)"),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON schema the answers must satisfy"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Edge-case suite: JSONL of prompts with checks"),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint for a pairwise LLM judge"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model name sent to the judge endpoint"),
    no_perplexity: bool = typer.Option(False, "--no-perplexity", help="Skip perplexity on the test data"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation limit (default from the longest reference)"),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts generated together"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N test items"),
    seed: int = typer.Option(0, "--seed", help="Seed for generation and the bootstrap"),
    engine: str = typer.Option("auto", "--engine", help="What generates the answers: auto (= transformers), transformers, llamacpp (the f16 GGUF; make llamacpp)"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object on the last line"),
    compare: Optional[str] = typer.Option(None, "--compare", help="Fine-tune, retrieve or both: any of base,base+kb,tuned,tuned+kb (needs --kb)"),
    kb: Optional[str] = typer.Option(None, "--kb", help="With --compare: the knowledge base the +kb contenders answer from"),
    k: int = typer.Option(4, "--k", min=1, help="With --compare: passages per question"),
):
    """Evaluate a tuned model against its base on held-out data: metrics, intervals, suites, judge."""
    from hone.evaluation.run_eval import EvalOptions, evaluate_model
    from hone.evaluation.show import print_eval

    options = EvalOptions(data=data, base=base, compare_base=not no_base, metrics=metric or None, schema=schema,
                          suite=suite, judge_url=judge_url, judge_model=judge_model, perplexity=not no_perplexity,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, seed=seed, engine=engine)
    if compare is not None or kb is not None:
        _compare_knowledge(target, compare, kb, k, options, as_json, no_base=no_base, suite=suite, judge=judge_url,
                           engine=engine != "auto")
        return
    result = evaluate_model(target, options, console=err)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print_eval(result, out)


def _compare_knowledge(target, compare, kb, k, options, as_json: bool, **refused) -> None:
    from hone.evaluation.contenders import compare_knowledge, parse_contenders, print_comparison

    if compare is None or kb is None:
        raise UserError("--compare and --kb go together: hone eval RUN --compare base,base+kb,tuned,tuned+kb "
                        "--kb NAME --data questions.jsonl")
    flags = {"no_base": "--no-base", "suite": "--suite", "judge": "--judge-url", "engine": "--engine"}
    for key, value in refused.items():
        if value:
            raise UserError(f"{flags[key]} does not apply to --compare (name the contenders in --compare instead)"
                            if key == "no_base" else f"{flags[key]} is not available with --compare yet; run it "
                            "without --compare")
    report = compare_knowledge(target, parse_contenders(compare), kb, options, k, console=err)
    print_comparison(report, err if as_json else out)
    if as_json:
        print(json.dumps(report.metrics(), ensure_ascii=False))


@app.command()
def report(run: str = typer.Argument(..., help="Run folder, run id or 'latest'"),
           open_page: bool = typer.Option(False, "--open", help="Open the page in a web browser")):
    """Write the run's self-contained HTML report (runs/<id>/report.html)."""
    from hone.evaluation.report import write_report
    from hone.registry.runs import find_run

    path = write_report(find_run(run))
    out.print(str(path), highlight=False)
    if open_page:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            err.print(f"no browser found; open {path.resolve().as_uri()}")


@models_app.command("catalog")
def models_catalog(as_json: bool = typer.Option(False, "--json")):
    """Built-in models that work offline."""
    from hone.models.catalogue import CATALOGUE, DEFAULT_MODEL, catalogue_file

    rows: list[dict[str, Any]] = [{"name": e.name, "kind": e.kind, "parameters": e.parameters, "installed": catalogue_file(e) is not None,
             "default": e.name == DEFAULT_MODEL, "description": e.description} for e in CATALOGUE.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(header_style="bold")
    for column in ("name", "kind", "parameters", "installed"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for row in rows:
        name = row["name"] + (" (default)" if row["default"] else "")
        table.add_row(name, row["kind"], row["parameters"], "yes" if row["installed"] else "no", row["description"])
    out.print(table)


@models_app.command("shrink")
def models_shrink(model: str = typer.Argument(..., help="Model to shrink: catalogue name, HF folder or .gguf"),
                  output: Path = typer.Argument(..., help="Folder for the smaller model"),
                  keep: Optional[int] = typer.Option(None, "--keep", help="Decoder layers to keep (default: half)")):
    """A smaller student for distillation: MODEL with fewer decoder layers (first and last kept, the rest spread evenly)."""
    from hone.models.shrink import drop_layers

    folder = drop_layers(model, output, keep)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    err.print(f"{folder}: {config['num_hidden_layers']} decoder layers; train it with "
              f"hone train --objective distill --model {folder} --teacher RUN_OR_MODEL", highlight=False)


@config_app.command("show")
def config_show(config: Optional[Path] = typer.Argument(None, help="YAML config (optional)"),
                sets: Optional[List[str]] = typer.Option(None, "--set", help="section.field=value"),
                as_json: bool = typer.Option(False, "--json")):
    """The resolved configuration, every field with its value and description."""
    from hone.config import field_paths, load_config, overrides

    cfg = load_config(config, overrides(sets))
    values = cfg.model_dump(mode="json")
    if as_json:
        print(json.dumps(values))
        return
    table = Table(header_style="bold")
    for column in ("field", "value", "description"):
        table.add_column(column)
    for path, (description, _default) in field_paths().items():
        value = values
        for part in path.split("."):
            value = value[part]
        if path == "train.lr" and value is None:
            value = f"{cfg.lr:g} (default for {cfg.method.name})"
        table.add_row(path, str(value), description)
    out.print(table)


group_help(app)


def main() -> None:
    """Entry point: user errors print one line and exit 2; interrupts say how to resume."""

    try:
        app()
    except UserError as exc:
        # Plain write, never rich: rich wraps long lines at the terminal width and reads
        # brackets in messages such as `messages[0]` as markup.
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except Interrupted as exc:
        sys.stderr.write(f"{exc}; continue with: hone train --resume latest\n")
        sys.exit(130)


