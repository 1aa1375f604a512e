"""The `hone` command: parses arguments, calls one library function, prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from hone.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models on your own hardware.")
models_app = typer.Typer(no_args_is_help=True, help="Base models.")
config_app = typer.Typer(no_args_is_help=True, help="Run configuration.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)


def _overrides(sets: list[str] | None, **flags) -> dict:
    from hone.config import parse_assignment

    values = {key: value for key, value in flags.items() if value is not None}
    for text in sets or []:
        key, value = parse_assignment(text)
        values[key] = value
    return values


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config (optional)"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Training data (JSONL chat)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data"),
    test: Optional[Path] = typer.Option(None, "--test", help="Test data, scored base vs tuned"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model"),
    method: Optional[str] = typer.Option(None, "--method", help="Adaptation method (`hone methods` lists them)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Effective batch size"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training budget in seconds"),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System message for examples without one"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder"),
    name: Optional[str] = typer.Option(None, "--name", help="Run name"),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Any config field: section.field=value"),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run (folder, id or 'latest')"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line"),
):
    """Fine-tune a model on your data (SFT on chat JSONL)."""
    from hone.config import load_config, to_yaml
    from hone.objectives.sft import run_sft
    from hone.summary import print_summary, summary_json
    from hone.train.run import find_run

    run_dir = None
    if resume:
        run_dir = find_run(resume)
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = load_config(config, _overrides(
            sets, **{"data.train": data and str(data), "data.validation": validation and str(validation),
                     "data.test": test and str(test), "model.name": model, "method.name": method,
                     "train.lr": lr, "train.epochs": epochs, "train.max_steps": max_steps,
                     "train.batch_size": batch_size, "train.time_budget": time_budget,
                     "data.system_prompt": system_prompt, "output": output and str(output), "name": name}))
    result = run_sft(cfg, run_dir=run_dir, console=err)
    if as_json:
        print(json.dumps(summary_json(result)))
    else:
        print_summary(result, out, cfg.eval.samples)


@app.command()
def demo(
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line"),
    train_seconds: Optional[float] = typer.Option(None, "--train-seconds", help="Training budget in seconds"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder"),
):
    """Fine-tune the embedded model on the bundled order-extraction task; show base vs tuned."""
    from hone.demo import DEMO_TRAIN_SECONDS, run_demo
    from hone.summary import print_summary, summary_json

    err.print("[bold]hone demo[/bold]: teach SmolLM2-135M to extract orders as JSON "
              f"({train_seconds or DEMO_TRAIN_SECONDS:.0f} s of LoRA training on this machine)")
    result = run_demo(train_seconds or DEMO_TRAIN_SECONDS, output, console=err)
    if as_json:
        print(json.dumps(summary_json(result)))
    else:
        print_summary(result, out, 4)


@app.command()
def chat(run: str = typer.Argument(..., help="Run folder, run id or 'latest'"),
         system: Optional[str] = typer.Option(None, "--system", help="System message"),
         max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
         temperature: float = typer.Option(0.0, "--temperature")):
    """Chat with a tuned model (streaming). Empty line or Ctrl-D quits."""
    from hone.hardware import pick_hardware
    from hone.models.generate import stream_answer
    from hone.train.run import find_run, load_run_model

    hw = pick_hardware()
    model, tokenizer = load_run_model(find_run(run), hw.device)
    messages = [{"role": "system", "content": system}] if system else []
    err.print("[dim]Type a message; an empty line quits.[/dim]")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        out.print("model> ", end="")
        parts = []
        for piece in stream_answer(model, tokenizer, messages, max_new_tokens, temperature):
            parts.append(piece)
            out.print(piece, end="", markup=False, highlight=False)
        out.print()
        messages.append({"role": "assistant", "content": "".join(parts)})


@app.command()
def generate(run: str = typer.Argument(..., help="Run folder, run id or 'latest'"),
             prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One user message"),
             file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL of chat examples or {\"prompt\": ...}"),
             system: Optional[str] = typer.Option(None, "--system", help="System message"),
             max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
             as_json: bool = typer.Option(False, "--json", help="One JSON object per answer")):
    """Answer one prompt or every prompt in a file with a tuned model."""
    from hone.hardware import pick_hardware
    from hone.models.generate import generate_batch
    from hone.train.run import find_run, load_run_model

    conversations = _prompts(prompt, file, system)
    hw = pick_hardware()
    model, tokenizer = load_run_model(find_run(run), hw.device)
    answers = generate_batch(model, tokenizer, conversations, max_new_tokens)
    for conversation, answer in zip(conversations, answers):
        if as_json:
            print(json.dumps({"prompt": conversation[-1]["content"], "answer": answer}, ensure_ascii=False))
        else:
            out.print(answer, markup=False, highlight=False)


def _prompts(prompt: str | None, file: Path | None, system: str | None) -> list[list[dict]]:
    from hone.data.formats import ChatExample, check_messages, read_jsonl

    head = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        return [head + [{"role": "user", "content": prompt}]]
    if file is None:
        raise UserError("give --prompt TEXT or --file prompts.jsonl")
    conversations = []
    for line, record in read_jsonl(file):
        if "messages" in record:
            example = ChatExample(record["messages"])
            if any(m.get("role") == "assistant" for m in record["messages"]):
                check_messages(record, str(file), line)
            conversations.append(head + example.prompt_messages)
        elif isinstance(record.get("prompt"), str):
            conversations.append(head + [{"role": "user", "content": record["prompt"]}])
        else:
            raise UserError("expected `messages` or `prompt` in each line", file=str(file), line=line)
    return conversations


@app.command("methods")
def methods_list(as_json: bool = typer.Option(False, "--json")):
    """Adaptation methods: what each trains, its default learning rate, where it applies."""
    from hone.methods import METHODS

    rows = [{"name": m.name, "trains": m.trains, "default_lr": m.default_lr, "saves": m.saves,
             "objectives": sorted(m.objectives), "choose_when": m.choose_when} for m in METHODS.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(header_style="bold")
    for column in ("method", "trains", "default lr", "choose when"):
        table.add_column(column, no_wrap=column in ("method", "default lr"))
    for row in rows:
        table.add_row(row["name"], row["trains"], f"{row['default_lr']:g}", row["choose_when"])
    out.print(table)


@models_app.command("catalog")
def models_catalog(as_json: bool = typer.Option(False, "--json")):
    """Built-in models that work offline."""
    from hone.models.catalogue import CATALOGUE, DEFAULT_MODEL, catalogue_file

    rows = [{"name": e.name, "kind": e.kind, "parameters": e.parameters, "installed": catalogue_file(e) is not None,
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


@config_app.command("show")
def config_show(config: Optional[Path] = typer.Argument(None, help="YAML config (optional)"),
                sets: Optional[List[str]] = typer.Option(None, "--set", help="section.field=value"),
                as_json: bool = typer.Option(False, "--json")):
    """The resolved configuration, every field with its value and description."""
    from hone.config import field_paths, load_config

    cfg = load_config(config, _overrides(sets))
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


def main() -> None:
    """Entry point: user errors print one line and exit 2; interrupts say how to resume."""
    from hone.train.loop import Interrupted

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


if __name__ == "__main__":
    main()
