"""Trainer-driven objectives follow a time budget with their learning-rate schedule, as hone's loop does."""
from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console
from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler

from hone.config import build_config
from hone.training.hf_trainer import HoneCallback


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cosine_scheduler(total_steps: int, warmup_steps: int = 0):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps,
                                    num_training_steps=total_steps)


def start(callback: HoneCallback, scheduler, total_steps: int, tmp_path) -> None:
    state = TrainerState(max_steps=total_steps)
    callback.on_train_begin(TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl(),
                            lr_scheduler=scheduler)


def step(optimizer, scheduler) -> float:
    optimizer.step()
    scheduler.step()
    return scheduler.get_last_lr()[0]


def test_budget_decays_the_lr_by_elapsed_time_when_steps_would_not(tmp_path):
    # 3 epochs would plan 1000 steps; the budget ends long before: the schedule follows the clock.
    clock = FakeClock()
    callback = HoneCallback(tmp_path, build_config({"train": {"time_budget": 100.0}}), console=Console(quiet=True), clock=clock)
    optimizer, scheduler = cosine_scheduler(1000)
    start(callback, scheduler, 1000, tmp_path)
    clock.now += 50.0  # half the budget spent after one step
    assert step(optimizer, scheduler) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-6)
    clock.now += 50.0
    assert step(optimizer, scheduler) == pytest.approx(0.0, abs=1e-6)  # the budget's end: lr reaches zero
    callback.bar.stop()


def test_warmup_spreads_over_the_budget_too(tmp_path):
    clock = FakeClock()
    callback = HoneCallback(tmp_path, build_config({"train": {"time_budget": 100.0}}), console=Console(quiet=True), clock=clock)
    optimizer, scheduler = cosine_scheduler(1000, warmup_steps=100)  # warmup: 10% of the plan
    start(callback, scheduler, 1000, tmp_path)
    clock.now += 5.0  # 5% of the budget: halfway through warmup, though only one step ran
    assert step(optimizer, scheduler) == pytest.approx(0.5, abs=1e-6)
    callback.bar.stop()


def test_first_step_under_a_budget_trains_at_a_warmup_lr_above_zero(tmp_path):
    clock = FakeClock()
    callback = HoneCallback(tmp_path, build_config({"train": {"time_budget": 100.0}}), console=Console(quiet=True), clock=clock)
    optimizer, scheduler = cosine_scheduler(10, warmup_steps=2)
    assert optimizer.param_groups[0]["lr"] == 0.0  # the Trainer's schedule: step 1 at warmup's 0
    start(callback, scheduler, 10, tmp_path)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # step 1 of a 2-step warmup
    callback.bar.stop()


def test_steps_lead_when_they_run_out_before_the_budget(tmp_path):
    clock = FakeClock()
    callback = HoneCallback(tmp_path, build_config({"train": {"time_budget": 1000.0}}), console=Console(quiet=True), clock=clock)
    optimizer, scheduler = cosine_scheduler(10)
    start(callback, scheduler, 10, tmp_path)
    lrs = []
    for _ in range(5):
        clock.now += 1.0  # fast steps: 5 of 10 done after 0.5% of the budget
        lrs.append(step(optimizer, scheduler))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)), abs=1e-6)  # the 6th step's lr: cosine at 6/10
    callback.bar.stop()


def test_without_a_budget_the_schedule_is_the_trainers(tmp_path):
    clock = FakeClock()
    callback = HoneCallback(tmp_path, build_config({"train": {"time_budget": None}}), console=Console(quiet=True), clock=clock)
    optimizer, scheduler = cosine_scheduler(1000)
    start(callback, scheduler, 1000, tmp_path)
    clock.now += 10_000.0
    assert step(optimizer, scheduler) == pytest.approx(0.5 * (1 + math.cos(math.pi / 1000)), abs=1e-9)
    callback.bar.stop()
