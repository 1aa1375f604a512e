"""Objectives: what training optimises. One file each, readable top to bottom; `run` picks one.

    sft       chat/instruction data, loss on assistant turns (per-turn `weight` 0/1)   sft.py
    pretrain  raw text packed into blocks: continued pre-training                     pretrain.py
    classify  sequence classification (encoder, or a decoder with a head)             classify.py
    ner       token classification, word tags aligned to tokens                       ner.py
    dpo, orpo, simpo   preference pairs through TRL (orpo/simpo need no reference)    preference.py
    reward    a scalar reward model from preference pairs (TRL RewardTrainer)         reward.py
    grpo      RL against a reward function or a trained reward model (TRL)            grpo.py
    mixture   several chat/text datasets with weights, one run                        mixture.py
"""
from __future__ import annotations

import importlib
from pathlib import Path

from rich.console import Console

from hone.config import RunConfig
from hone.launch import check_launch
from hone.objectives.checks import check_config

# objective -> (module, function); each function takes (config, run_dir=None, console=None).
RUNNERS = {
    "sft": ("sft", "run_sft"), "pretrain": ("pretrain", "run_pretrain"),
    "classify": ("classify", "run_classify"), "ner": ("ner", "run_ner"),
    "dpo": ("preference", "run_preference"), "orpo": ("preference", "run_preference"),
    "simpo": ("preference", "run_preference"), "reward": ("reward", "run_reward"),
    "grpo": ("grpo", "run_grpo"), "mixture": ("mixture", "run_mixture"),
}


def run(config: RunConfig, run_dir: Path | None = None, console: Console | None = None):
    """Train `config.objective` (`auto`: the recipe hone advises for the data, printed with its reasons);
    invalid objective/method/data combinations fail before any work."""
    from hone.objectives.advice import choose_recipe

    console = console or Console(stderr=True)
    config = choose_recipe(config, console)
    check_config(config)
    check_launch(config.objective, config.train.sharding)
    module, function = RUNNERS[config.objective]
    runner = getattr(importlib.import_module(f"hone.objectives.{module}"), function)
    return runner(config, run_dir=run_dir, console=console)
