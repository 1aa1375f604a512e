"""Sweeps and merges: searching a recipe's settings within a budget, and combining tuned models.

    study.py    `hone sweep`: Optuna (TPE, median pruning) over normal registered runs, resumable, honest
    storage.py  the study in hone's database: one trial per process, the trials of dead processes recovered
    budget.py   what the trials spent, what the next one takes, how many a budget holds (`hone plan --budget`)
    space.py    the one table of searchable dimensions and the default space per method and objective
    results.py  the best trial scored once on the test split, best.yaml, the report page
    distributed.py  `hone sweep --workers` waits while `hone worker --sweeps` processes run the trials
    merge.py    `hone merge`: LoRA adapters (PEFT weighted-adapter merging) or full models (task arithmetic)
"""
from __future__ import annotations

from hone.sweeps.results import SweepResult, run_sweep, show_sweep
from hone.sweeps.study import SweepOptions

__all__ = ["SweepOptions", "SweepResult", "run_sweep", "show_sweep"]
