"""`hone data`: check, split and clean training data (the CLI side of hone.data)."""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hone.errors import UserError

out = Console()
err = Console(stderr=True)
data_app = typer.Typer(no_args_is_help=True, help="Check, split and clean training data.")


@data_app.command("check")
def data_check(
    files: List[Path] = typer.Argument(..., help="Data files: train first, then validation and test (checked for leakage)"),
    model: str = typer.Option(None, "--model", "-m", help="Model whose tokenizer counts tokens (default: the catalogue default)"),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip token counts (no tokenizer load)"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Training length limit (default: data.max_length)"),
    data_format: Optional[str] = typer.Option(None, "--format", help="Force the data shape (default: detected)"),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first problem"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the JSON and HTML report (default: beside the first file)"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
):
    """Validate data and report its quality: problems by line, duplicates, conflicts, PII, lengths, leakage.

    Exit status: 0 no problems; 1 problems found (records skipped, or records that train no token);
    2 a fatal problem with the data or the command (one line; with --strict, the first problem);
    70 an internal error, a bug in hone rather than in the data (please report it with its traceback).
    """
    try:
        problems = _check(files, model, no_tokens, max_seq_len, data_format, strict, output, as_json)
    except (UserError, typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug: say so, distinctly from "your data has problems" (1) and "bad input" (2)
        traceback.print_exc()
        err.file.write(f"error: internal error in hone data check ({type(exc).__name__}); this is a bug in hone, "
                       "not a problem in your data: please report it with the traceback above\n")
        raise typer.Exit(INTERNAL_ERROR) from None
    if problems:
        raise typer.Exit(1)


INTERNAL_ERROR = 70  # EX_SOFTWARE in sysexits.h: distinct from 1 (problems found) and 2 (user error)


def _check(files, model, no_tokens, max_seq_len, data_format, strict, output, as_json) -> bool:
    """Run the check, write and print the report; True when it found problems."""
    from hone import atomic
    from hone.config import DataSection
    from hone.data.quality import check_data, has_errors
    from hone.data.report import print_report, render_html
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.models.load import counting_tokenizer

    limit = max_seq_len or DataSection().max_length
    name = None if no_tokens else (model or DEFAULT_MODEL)
    tokenizer, context = counting_tokenizer(name) if name else (None, None)
    report = check_data(files, name, limit, data_format, strict, tokenizer=tokenizer, context=context)
    first = Path(files[0])
    folder = output or (first.parent if first.is_file() else first.parent)
    stem = (first.stem if first.is_file() else first.name)[:200]  # room for ".check.html" and a temp name
    json_path, html_path = folder / f"{stem}.check.json", folder / f"{stem}.check.html"
    atomic.write_json(json_path, report)
    atomic.write_text(html_path, render_html(report))
    if as_json:
        print(json.dumps(report))
    else:
        print_report(report, out)
        out.print(f"report: {json_path} and {html_path}", highlight=False)
    return has_errors(report)


@data_app.command("split")
def data_split(
    file: Path = typer.Argument(..., help="Data file to split"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for train/validation/test.jsonl (default: <name>-split beside the file)"),
    sizes: str = typer.Option("80/10/10", "--sizes", help="train/validation/test shares"),
    seed: int = typer.Option(42, "--seed", help="Seed for the shuffle"),
    data_format: Optional[str] = typer.Option(None, "--format", help="Force the data shape (default: detected)"),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad record instead of skipping it"),
    no_near: bool = typer.Option(False, "--no-near", help="Do not keep near-duplicates on the same side"),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON"),
):
    """Split data into train/validation/test: seeded, stratified by label, near-duplicates kept together."""
    from hone.data.split import parse_sizes, split_dataset

    result = split_dataset(file, output, parse_sizes(sizes), seed, data_format, strict, near=not no_near)
    manifest = result.manifest
    if as_json:
        print(json.dumps(manifest))
        return
    table = Table(header_style="bold")
    for column in ("split", "records", "file", "fingerprint"):
        table.add_column(column)
    for name, split in manifest["splits"].items():
        table.add_row(name, f"{split['records']:,}", str(result.out_dir / split["file"]), split["fingerprint"][:16])
    out.print(table)
    notes = [f"seed {seed}", f"stratified by {manifest['stratified_by']}" if manifest["stratified_by"] else "not stratified (no labels)"]
    if manifest["near_duplicates_kept_together"]:
        notes.append(f"{manifest['near_duplicates_kept_together']} near-duplicate groups kept on one side")
    if manifest["skipped"]:
        notes.append(f"{manifest['skipped']} bad records skipped ({', '.join(f'{n} {k}' for k, n in manifest['problems'].items())})")
    out.print("; ".join(notes) + f"\nmanifest: {result.out_dir / 'split.json'}", highlight=False)


@data_app.command("clean")
def data_clean(
    file: Path = typer.Argument(..., help="Data file to clean (never modified)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Cleaned JSONL (default: <name>.clean.jsonl beside the file)"),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep duplicates"),
    no_near: bool = typer.Option(False, "--no-near", help="Drop exact duplicates only, keep near-duplicates"),
    no_redact: bool = typer.Option(False, "--no-redact", help="Keep PII as it is"),
    data_format: Optional[str] = typer.Option(None, "--format", help="Force the data shape (default: detected)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
):
    """Write a cleaned copy: invalid records and duplicates dropped, PII redacted; every change logged."""
    from hone.data.clean import clean_file

    result = clean_file(file, output, dedup=not no_dedup, near=not no_near, redact_pii=not no_redact, shape=data_format)
    summary = {"output": str(result.output), "log": str(result.log), "kept": result.kept, "changes": result.changes}
    if as_json:
        print(json.dumps(summary))
        return
    changes = ", ".join(f"{n:,} {action.replace('_', ' ')}" for action, n in result.changes.items()) or "no changes"
    out.print(f"kept {result.kept:,} records; {changes}\nwrote {result.output}\nlog of every change: {result.log}",
              highlight=False)


@data_app.command("synth")
def data_synth(
    kb: str = typer.Option(..., "--kb", help="Knowledge base to write questions about (NAME or NAME:VERSION)"),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Training data to write (chat JSONL, each example with its chunk id in `source`)"),
    teacher: str = typer.Option("local", "--teacher", help="'local' (a model on this machine) or the URL of an OpenAI-compatible endpoint"),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="Local: a run or model (default: the catalogue default); URL: the model name sent"),
    per_chunk: int = typer.Option(3, "--per-chunk", min=1, help="Question-answer pairs asked for per chunk"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only N chunks, spread over the knowledge base"),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Evaluation questions (JSONL) no training pair may repeat"),
    min_grounding: float = typer.Option(0.6, "--min-grounding", min=0.0, max=1.0, help="Share of an answer's words that must occur in its chunk"),
    with_passages: int = typer.Option(0, "--with-passages", min=0, help="Write each question with K retrieved passages in its prompt (its own chunk among them), to train for answering with a knowledge base"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Ask about 3 chunks (or --limit), show the pairs and verdicts, write nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on the last line"),
):
    """Question-answer pairs grounded in a knowledge base's chunks, from a teacher; filtered and reported."""
    from hone.evaluation.predict import teacher_for
    from hone.hardware import pick_hardware
    from hone.kb import KnowledgeBase
    from hone.kb.synth import REASONS, synthesise

    if out_path is None and not dry_run:
        raise UserError("give --out train.jsonl (or --dry-run to see a few pairs first)")
    knowledge = KnowledgeBase(kb)
    # room for each pair, not for rambling past them: a batch generates until its longest reply ends
    ask, name = teacher_for(teacher, teacher_model, pick_hardware().device if teacher == "local" else "cpu",
                            max_new_tokens=100 * per_chunk)
    result = synthesise(knowledge, ask, name, None if dry_run else out_path, per_chunk, limit or (3 if dry_run else None),
                        exclude, min_grounding, with_passages=with_passages, console=err)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    if dry_run:
        for c in result.candidates:
            verdict = "[green]keep[/green]" if c.reason is None else f"[red]drop[/red] ({REASONS[c.reason]})"
            out.print(f"{verdict} [dim]{escape(c.source)}[/dim]\n  Q: {escape(c.question)}\n  A: {escape(c.answer)}",
                      highlight=False)
        for chunk in result.unparsable:
            out.print(f"[red]drop[/red] [dim]{escape(chunk)}[/dim]: {REASONS['unparsable']}", highlight=False)
    table = Table(header_style="bold")
    for column in ("pairs", "kept", *result.dropped()):
        table.add_column(column if column in ("pairs", "kept") else f"dropped: {REASONS[column]}")
    table.add_row(str(len(result.candidates)), str(len(result.kept)), *(str(n) for n in result.dropped().values()))
    out.print(f"{result.chunks} chunks of {result.kb}, teacher {result.teacher}, {result.seconds:.0f} s", highlight=False)
    out.print(table)
    if result.output:
        out.print(f"wrote {result.output} ({len(result.kept)} examples); report: {result.output}.synth.json",
                  highlight=False)


@data_app.command("from-traffic")
def data_from_traffic(
    model: str = typer.Argument(..., help="The served model as clients name it (hone monitor MODEL lists the same)"),
    output: Path = typer.Option(..., "--output", "-o", help="Chat JSONL to write (lineage beside it: FILE.lineage.json)"),
    include_good: bool = typer.Option(False, "--include-good", help="Also train on answers rated good (default: corrections only)"),
    since: Optional[str] = typer.Option(None, "--since", help="Only feedback on traffic since: 24h, 7d or a date"),
    org: Optional[str] = typer.Option(None, "--org", help="Only this org's traffic"),
    keep_pii: bool = typer.Option(False, "--keep-pii", help="Keep personal data found in the examples (default: redacted)"),
    holdout: float = typer.Option(0.3, "--holdout", help="Share of the corrections held out (never trained on) as the new slice hone promote scores; 0: none"),
    holdout_output: Optional[Path] = typer.Option(None, "--holdout-output", help="Where the held-out slice goes (default: FILE.holdout.jsonl beside --output)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out draw"),
    db: Optional[str] = typer.Option(None, "--db", help="Service database URL (default: SQLite under the hone home, as hone serve)"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line"),
):
    """A new dataset version from served traffic: corrected answers (and good ones with --include-good), minus
    what leaks into the model's test split or repeats its training data, PII redacted, with its lineage."""
    from hone.monitor.from_traffic import REASONS, dataset_from_traffic
    from hone.monitor.traffic import parse_since

    result = dataset_from_traffic(model, output, include_good, parse_since(since), org, db, keep_pii, holdout,
                                  holdout_output, seed)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    out.print(f"{result.output}: {result.examples} example(s) ({result.corrected} corrected, {result.good} rated good)"
              f"{f', {result.redacted} with personal data redacted' if result.redacted else ''}", highlight=False, soft_wrap=True)
    if result.holdout:
        out.print(f"{result.holdout}: {result.held_out} corrected example(s) held out, never in {result.output} "
                  "(hone promote scores the next version on them)", highlight=False, soft_wrap=True)
    elif holdout:
        out.print(f"  no held-out slice: {holdout:g} of the corrections rounds to none; give hone promote a "
                  "--new-slice of your own", highlight=False, soft_wrap=True)
    for reason, ids in result.dropped.items():
        out.print(f"  left out {len(ids)}: {REASONS[reason]} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})",
                  highlight=False, soft_wrap=True)
    for pair in result.report["leakage"]:
        if pair["exact"] or pair["same_input"] or pair["near"]:
            out.print(f"  against {pair['files'][1] if pair['files'][0] == str(result.output) else pair['files'][0]}: "
                      f"{pair['exact']} identical, {pair['same_input']} same input, {pair['near']} near-duplicate",
                      highlight=False, soft_wrap=True)
    out.print(f"lineage: {result.lineage}", highlight=False, soft_wrap=True)
