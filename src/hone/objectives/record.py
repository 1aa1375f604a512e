"""What every objective writes into its run folder, the same way SFT does.

    config.yaml   the resolved configuration (new_run_dir)
    run.json      status, objective, method, base model, data sizes, then results and timings
    metrics.jsonl one line per optimizer step (hone's loop or the Trainer callback)
    adapter/      what the method trained (+ tokenizer), written by methods/artifact.py's
                  `save_tuned`: a peft adapter, or the trained tensors (freeze, bitfit, adapters,
                  probe; a classifier's head among them); model/ for full fine-tuning
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from hone import __version__, atomic
from hone.config import MethodSection, RunConfig
from hone.hardware import Hardware, pick_hardware
from hone.launch import launcher_name
from hone.methods import artifact_folder_name, check_method, meta_model, save_tuned
from hone.train.distributed import ranks
from hone.registry.runs import new_run_dir, update_record
from hone.train.sharding import sync_name


@dataclass
class ObjectiveResult:
    """A finished run of any objective other than sft (which returns its richer SFTResult)."""
    run_dir: Path
    objective: str
    results: dict
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    record: dict = field(default_factory=dict)


@dataclass
class RunStart:
    run_dir: Path
    hw: Hardware
    resume: bool
    started: float


def begin_run(config: RunConfig, run_dir: Path | None, console: Console, data: dict,
              own_loop: bool = False) -> RunStart:
    """Create (or reopen, to resume) the run folder once the data has been read without error.

    `own_loop`: hone's loop casts frozen linears to bf16 (train/precision.py); Trainer-driven
    objectives keep fp32 weights with bf16 matmuls, and the hardware line says so.
    """
    started = time.monotonic()
    check_method_on_model(config)
    resume = run_dir is not None
    team = ranks()  # under torchrun/accelerate: rank 0 makes the folder, the others train into it
    run_dir = team.from_main(Path(run_dir) if resume else (new_run_dir(config) if team.main else None))
    hw = pick_hardware(config.train.precision, config.train.threads)
    if hw.frozen_bf16 and not own_loop:
        hw = replace(hw, frozen_bf16=False, note=f"CPU, {hw.threads} thread(s), fp32 training with bf16 matmuls")
    console.print(f"[bold]hone[/bold] {config.objective} run folder {run_dir}\n  hardware: {hw.note}")
    if team.main:
        sync = sync_name(config.train, team.world) if own_loop else "Trainer (DDP)"
        distributed = ({"world_size": team.world, "backend": team.backend, "sync": sync,
                        "launcher": launcher_name()} if team.world > 1 else None)
        update_record(run_dir, status="running", hone_version=__version__, objective=config.objective,
                      base_model=config.model.name, method=config.method.name, data=data,
                      distributed=distributed)
    return RunStart(run_dir, hw, resume, started)


# The transformers class each objective builds its model with: a meta copy of it is what the method check sees.
MODEL_CLASS = {"classify": "AutoModelForSequenceClassification", "reward": "AutoModelForSequenceClassification",
               "ner": "AutoModelForTokenClassification"}


def check_method_on_model(config: RunConfig) -> None:
    """The method against the model's structure (bitfit needs biases, probe a head, ...), on a weightless
    copy: an impossible choice fails in one line before the run folder, data rendering or loading."""
    from hone.models.catalogue import resolve_model

    model = meta_model(resolve_model(config.model.name).path, MODEL_CLASS.get(config.objective, "AutoModelForCausalLM"))
    check_method(config.method, config.objective, model)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_artifact(model, tokenizer, run_dir: Path, method: MethodSection) -> Path:
    """What `method` trained (adapter/, or model/ for full fine-tuning) with the tokenizer, written atomically."""
    out = Path(run_dir) / artifact_folder_name(method)
    with atomic.folder(out) as tmp:
        save_tuned(model, method, tmp)
        tokenizer.save_pretrained(tmp)
    return out


def finish_run(start: RunStart, objective: str, results: dict, train_seconds: float) -> ObjectiveResult:
    total = time.monotonic() - start.started
    record = update_record(start.run_dir, status="succeeded", results=results,
                           train_seconds=round(train_seconds, 2), total_seconds=round(total, 2),
                           hardware=start.hw.note)
    return ObjectiveResult(start.run_dir, objective, results, train_seconds, total, record)
