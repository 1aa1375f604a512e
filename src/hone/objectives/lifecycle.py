"""One run lifecycle for every objective: open the run folder, guard against forgetting, record, report.

    begin_run     the run folder (config.yaml, run.json `running`) once the data has been read
    probe_base    the forgetting probe on the base model (general skills), kept in run.json for resume
    probe_tuned   the same probe on the tuned model: the drop, its interval and the gate's verdict
    finish_run    run.json `succeeded` with the results, the HTML report, and the one RunResult

What lands in the run folder:
    config.yaml   the resolved configuration (registry/runs.py `new_run_dir`)
    run.json      status, objective, method, base model, data sizes, then results and timings
    metrics.jsonl one line per optimizer step (hone's loop or the Trainer callback)
    adapter/      what the method trained (+ tokenizer), written by methods/artifact.py's
                  `save_tuned`: a peft adapter, or the trained tensors (freeze, bitfit, adapters,
                  probe; a classifier's head among them); model/ for full fine-tuning
    report.html   the report page (evaluation/report.py)
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from hone import atomic
from hone.config import MethodSection, RunConfig
from hone.evaluation.forgetting import ProbeScores, compare_probe, load_probe, probe_wanted, score_probe
from hone.evaluation.report import write_report
from hone.hardware import Hardware, pick_hardware
from hone.launch import launcher_name
from hone.methods import artifact_folder_name, save_tuned
from hone.models.catalogue import resolve_model
from hone.registry.runs import new_run_dir, read_record, update_record
from hone.training.distributed import ranks
from hone.training.sharding import sync_name
from hone.training.trackers import Trackers, tracker_names
from hone.version import __version__

# Scores read as a share (printed as a percentage); every other metric is printed as a number.
SHARE_METRICS = {"accuracy", "exact_match", "json_match", "pairwise_accuracy", "entity_f1", "macro_f1",
                 "word_accuracy"}


@dataclass
class Row:
    """One extra line of a result table: a figure for the base and for the tuned model (and the teacher)."""
    label: str
    base: float | str | None
    tuned: float | str | None
    teacher: float | str | None = None  # distill: the same figure for the teacher
    share: bool = False            # print as a percentage


@dataclass
class RunResult:
    """A finished run of any objective: what `hone.train` returns and `hone train` prints."""
    run_dir: Path
    objective: str
    method: str
    metric: str | None = None               # what base_score and tuned_score measure
    base_score: float | None = None         # always measured on the base model, never a constant
    tuned_score: float | None = None
    teacher_score: float | None = None      # distill: the teacher on the same test items
    baseline: str | None = None             # how the base was scored, when not as the tuned model was
    lower_is_better: bool = False
    steps: int | None = None
    stopped_by: str | None = None           # epochs, max_steps, time_budget, early_stopping
    losses: dict = field(default_factory=dict)  # first, last (train), validation, best_validation, best_step
    forgetting: dict | None = None          # the probe's verdict (evaluation/forgetting.py), when it ran
    artifact: str | None = None             # adapter/ or model/
    rows: list[Row] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # prompt, base, tuned, expected, correct
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    record: dict = field(default_factory=dict)

    @property
    def share(self) -> bool:
        return self.metric in SHARE_METRICS

    @property
    def forgetting_failed(self) -> bool:
        if not self.forgetting:
            return False
        return not self.forgetting["passed"]

    def to_json(self) -> dict:
        """Plain data: the last line of `hone train --json`."""
        data = asdict(self)
        data.pop("record")
        data["run_dir"] = str(self.run_dir)
        data["recipe"] = self.record.get("recipe")
        data["results"] = self.record.get("results", {})
        return data


@dataclass
class RunStart:
    config: RunConfig
    run_dir: Path
    hw: Hardware
    resume: bool
    started: float
    console: Console


def begin_run(config: RunConfig, run_dir: Path | None, console: Console, data: dict,
              own_loop: bool = False) -> RunStart:
    """Create (or reopen, to resume) the run folder once the data has been read without error.

    `own_loop`: hone's loop casts frozen linears to bf16 (training/precision.py); Trainer-driven
    objectives keep fp32 weights with bf16 matmuls, and the hardware line says so. Under torchrun or
    accelerate, rank 0 makes the folder and the others train into it.
    """
    started = time.monotonic()
    resume = run_dir is not None
    team = ranks()
    if not team.main:
        console = Console(stderr=True, quiet=True)
    run_dir = team.from_main(Path(run_dir) if run_dir is not None else (new_run_dir(config) if team.main else None))
    hw = pick_hardware(config.train.precision, config.train.threads)
    if hw.frozen_bf16 and not own_loop:
        hw = replace(hw, frozen_bf16=False, note=f"CPU, {hw.threads} thread(s), fp32 training with bf16 matmuls")
    console.print(f"[bold]hone[/bold] {config.objective} run folder {run_dir}\n  hardware: {hw.note}")
    if team.main:
        sync = sync_name(config.train, team.world) if own_loop else "Trainer (DDP)"
        distributed = ({"world_size": team.world, "backend": team.backend, "sync": sync,
                        "launcher": launcher_name()} if team.world > 1 else None)
        update_record(run_dir, status="running", hone_version=__version__, objective=config.objective,
                      base_model=config.model.name, base_path=str(resolve_model(config.model.name).path),
                      method=config.method.name, data=data,
                      distributed=distributed, parent=config.model.parent)
    return RunStart(config, run_dir, hw, resume, started, console)


def probe_base(start: RunStart, model, tokenizer) -> ProbeScores | None:
    """The forgetting probe on the base model before any change (None when eval.forgetting is off)."""
    config, console = start.config, start.console
    if not ranks().main or not probe_wanted(config.eval.forgetting, model):
        return None
    saved = read_record(start.run_dir).get("probe_base") if start.resume else None
    if saved:
        scores = ProbeScores.from_json(saved)
    else:
        scores = score_probe(model, tokenizer, load_probe(config.eval.probe), label="forgetting probe (base)",
                             console=console)
        update_record(start.run_dir, probe_base=scores.to_json())
    console.print(f"  forgetting probe: base {scores.accuracy:.1%} on {len(scores.ids)} general-skills items "
                  f"({scores.seconds:.0f} s)")
    return scores


def probe_tuned(start: RunStart, base: ProbeScores | None, model, tokenizer) -> dict | None:
    """The probe on the tuned model against the base's scores: drop, 95% interval, the gate's verdict."""
    if base is None:
        return None
    config, console = start.config, start.console
    tuned = score_probe(model, tokenizer, load_probe(config.eval.probe), label="forgetting probe (tuned)",
                        console=console)
    verdict = compare_probe(base, tuned, config.eval.max_forgetting).to_json()
    update_record(start.run_dir, probe_tuned=tuned.to_json())
    console.print(f"  forgetting probe: tuned {tuned.accuracy:.1%}, drop {verdict['drop']:+.1f} points "
                  f"(95% CI {verdict['ci'][0]:+.1f} to {verdict['ci'][1]:+.1f}) "
                  + ("[green]within[/green]" if verdict["passed"] else "[red]over[/red]")
                  + f" the {verdict['gate']:g}-point gate")
    return verdict


def own_loop_trackers(start: RunStart) -> Trackers:
    """The trackers of `train.report_to` for hone's loop (the Trainer's callback makes its own)."""
    config = start.config
    names = tracker_names(config.train.report_to) if ranks().main else []
    return Trackers(names, start.run_dir, config.model_dump(mode="json"), config.name)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_artifact(model, tokenizer, run_dir: Path, method: MethodSection) -> Path:
    """What `method` trained (adapter/, or model/ for full fine-tuning) with the tokenizer, written atomically."""
    out = Path(run_dir) / artifact_folder_name(method)
    with atomic.folder(out) as tmp:
        save_tuned(model, method, tmp)
        tokenizer.save_pretrained(tmp)
    return out


def finish_run(start: RunStart, results: dict, train_seconds: float, rows: Sequence[Row] = (),
               samples: Sequence[dict] = (), forgetting: dict | None = None, lower_is_better: bool = False,
               **record_fields) -> RunResult:
    """Record the results (run.json `succeeded`), write the report page, and return the RunResult."""
    config = start.config
    total = time.monotonic() - start.started
    results = {**results, "rows": [asdict(r) for r in rows]} if rows else results
    record = update_record(start.run_dir, status="succeeded", results=results, forgetting=forgetting,
                           train_seconds=round(train_seconds, 2), total_seconds=round(total, 2),
                           hardware=start.hw.note, **record_fields)
    try:  # a failure here must not cost the trained run
        start.console.print(f"  report: {write_report(start.run_dir)}")
    except Exception as exc:  # noqa: BLE001
        start.console.print(f"[yellow]  report not written ({type(exc).__name__}: {exc}); retry: hone report "
                            f"{start.run_dir}[/yellow]")
    losses = {key: results.get(key) for key in ("first_loss", "train_loss", "val_loss", "best_val_loss", "best_step")
              if results.get(key) is not None}
    return RunResult(start.run_dir, config.objective, config.method.name, results.get("metric"),
                     results.get("base_score"), results.get("tuned_score"), results.get("teacher_score"),
                     results.get("baseline"),
                     lower_is_better, results.get("steps"), results.get("stopped_by"), losses, forgetting,
                     results.get("artifact"), list(rows), list(samples), train_seconds, total, record)
