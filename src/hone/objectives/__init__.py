"""Objectives: what training optimises. One recipe file each, read top to bottom; one table
(objectives/registry.py) says what each trains on, builds and reports; `run` conducts any of them.

    sft       chat/instruction data, loss on assistant turns (per-turn `weight` 0/1)   sft.py
    pretrain  raw text packed into blocks: continued pre-training                     pretrain.py
    mixture   several chat/text datasets with weights, one run                        mixture.py
    classify  sequence classification (encoder, or a decoder with a head)             classify.py
    ner       token classification, word tags aligned to tokens                       ner.py
    dpo, orpo, simpo   preference pairs through TRL (orpo/simpo need no reference)    preference.py
    reward    a scalar reward model from preference pairs (TRL RewardTrainer)         reward.py
    grpo      RL against a reward function or a trained reward model (TRL)            grpo.py
    distill   a teacher's answers (+ its distributions when vocabularies match)       distill.py

Every recipe shares one lifecycle (lifecycle.py): begin_run, the forgetting probe before and after,
finish_run (run.json, the HTML report) and one RunResult.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from hone.config import RunConfig
from hone.methods.artifact import tuned_model_folder
from hone.objectives.advice import choose_recipe
from hone.objectives.checks import check_config
from hone.objectives.continued import on_continued_run
from hone.objectives.lifecycle import RunResult
from hone.objectives.registry import OBJECTIVES, Objective
from hone.registry.runs import find_run, run_reference

__all__ = ["OBJECTIVES", "Objective", "RunResult", "run"]


def run(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train `config.objective` (`auto`: the recipe hone advises for the data, printed with its reasons).

    A tuned model as the base (`model.name` a run folder, NAME:VERSION or NAME@TAG) trains on that run's
    tuned weights and records it as the parent. Invalid objective/method/data combinations fail before
    any work; `run_dir` of an interrupted run resumes it. `model.continue_from` (hone train --continue)
    trains the next version of a run from its own weights (objectives/continued.py)."""
    console = console or Console(stderr=True)
    config = on_continued_run(config, console)
    config = on_registered_model(config, console)
    config = choose_recipe(config, console)
    entry = check_config(config)
    result = entry.run(config, run_dir=run_dir, console=console)
    result.lower_is_better = entry.lower_is_better
    return result


def on_registered_model(config: RunConfig, console: Console) -> RunConfig:
    """`model.name` naming a run (a run folder, NAME:VERSION, NAME@TAG): its tuned model as a plain folder,
    with the run as the parent. Catalogue names, model folders and .gguf files pass unchanged."""
    if config.model.parent or run_reference(config.model.name) is None:
        return config
    parent = find_run(config.model.name)
    folder = tuned_model_folder(parent)
    console.print(f"  base: {config.model.name} -> {folder}", highlight=False)
    model = config.model.model_copy(update={"name": str(folder), "parent": str(parent.resolve())})
    updated = config.model_copy(update={"model": model})
    updated._source, updated._text = config._source, config._text
    return updated
