"""Every safeguard for every objective: validation, early stopping, restore-best, trackers, the forgetting
probe and the report work for the Trainer-driven objectives too, or are refused in one line."""
from __future__ import annotations

import json

import pytest
from objective_helpers import (chat_rows, label_rows, preference_rows, tag_rows, tiny_run_config,
                               write_jsonl)

from hone import objectives
from hone.errors import ConfigError
from hone.objectives.registry import OBJECTIVES


def swapped(objective: str, rows: list[dict]) -> list[dict]:
    """The same examples with the opposite answer: validation loss rises as training learns the originals."""
    if objective == "classify":
        return [{**r, "label": "bad" if r["label"] == "good" else "good"} for r in rows]
    if objective == "ner":
        return [{**r, "tags": ["B-ITEM", "O", "B-PER", "B-QTY"]} for r in rows]
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


ROWS = {"classify": label_rows, "ner": tag_rows, "dpo": preference_rows, "orpo": preference_rows,
        "simpo": preference_rows, "reward": preference_rows}


@pytest.mark.parametrize("objective", ["classify", "ner", "dpo", "orpo", "simpo", "reward"])
def test_patience_of_one_on_a_rising_validation_loss_stops_early_and_restores_the_best(objective, tiny_model,
                                                                                         tmp_path):
    rows = ROWS[objective](16)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "validation.jsonl", swapped(objective, rows[:8]))
    config = tiny_run_config(tiny_model, tmp_path, objective, train, data={"validation": str(validation)},
                             train={"max_steps": 12, "eval_every": 1, "early_stopping_patience": 1,
                                    "lr": 5e-2, "report_to": "tensorboard"},
                             eval={"forgetting": False})
    result = objectives.run(config)
    record = json.loads((result.run_dir / "run.json").read_text())["results"]
    validations = [(r["step"], r["val_loss"]) for r in
                   map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    best_step, best = min(validations, key=lambda v: v[1])
    assert result.stopped_by == "early_stopping" and result.steps < 12, validations
    assert validations[-1][1] > best                           # it stopped because validation loss rose
    assert record["best_step"] == best_step < result.steps and record["restored_best"] is True
    assert (result.run_dir / "checkpoints" / "best" / "trainable.safetensors").is_file()
    assert any((result.run_dir / "tensorboard").iterdir())      # train.report_to honoured
    assert (result.run_dir / "report.html").is_file()


def test_classify_run_has_a_measured_base_a_trivial_baseline_row_forgetting_figures_and_a_report(tiny_model,
                                                                                                  tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", label_rows(24))
    test = write_jsonl(tmp_path / "test.jsonl", label_rows(8, seed=1))
    config = tiny_run_config(tiny_model, tmp_path, "classify", train, data={"test": str(test)},
                             eval={"forgetting": True})
    result = objectives.run(config)
    assert result.base_score is not None and "zero-shot" in result.baseline   # generated answers read as labels
    assert any(row.label.startswith("trivial baseline: always") for row in result.rows)
    assert result.forgetting is not None and {"base", "tuned", "drop", "passed"} <= set(result.forgetting)
    assert (result.run_dir / "report.html").is_file()
    assert "probe_tuned" in json.loads((result.run_dir / "run.json").read_text())


def test_dpo_run_has_forgetting_figures_and_a_report(tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(16))
    config = tiny_run_config(tiny_model, tmp_path, "dpo", train, train={"max_steps": 2}, eval={"forgetting": True})
    result = objectives.run(config)
    assert result.forgetting is not None and result.forgetting["n"] > 0
    assert (result.run_dir / "report.html").is_file()


@pytest.mark.parametrize("objective, setting, value", [
    (name, setting, 0.5 if setting in ("train.kl_to_base", "train.replay") else
     (2 if setting != "train.restore_best" else True))
    for name, entry in OBJECTIVES.items() for setting in entry.refuses])
def test_a_safeguard_that_cannot_apply_is_refused_in_one_line(objective, setting, value, tiny_model, tmp_path):
    rows = {"pretrain": [{"text": "a b c"}] * 4, "sft": chat_rows(4), "grpo": chat_rows(4)}
    data = write_jsonl(tmp_path / "train.jsonl", rows.get(objective) or ROWS.get(objective, chat_rows)(4))
    section, name = setting.split(".")
    extra = {"grpo": {"reward_function": "hone.objectives.rewards:exact_answer"}} if objective == "grpo" else {}
    if objective == "mixture":
        extra = {"mixture": [{"train": str(data)}, {"train": str(data)}]}
    config = tiny_run_config(tiny_model, tmp_path, objective, data, train={name: value}, **extra)
    with pytest.raises(ConfigError) as error:
        objectives.run(config)
    message = str(error.value)
    assert f"{setting} does not apply to objective {objective}" in message and "\n" not in message


def test_every_objective_has_every_field_of_the_table():
    for entry in OBJECTIVES.values():
        assert entry.name and entry.trains and entry.run and entry.metric
        assert entry.loop in ("hone", "trainer") and entry.model_class.startswith("AutoModelFor")
        assert entry.head in (None, "sequence", "token", "reward")
        assert entry.name == "mixture" or entry.needs


def test_the_docs_table_is_the_registry_table():
    from pathlib import Path

    from hone.objectives.registry import safeguard_table

    docs = (Path(__file__).parents[1] / "docs" / "objectives.md").read_text(encoding="utf-8")
    assert safeguard_table() in docs


def losses_of(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_classify_run_repeats_its_losses_from_the_same_seed(tiny_model, tmp_path):
    """The new head's initialisation, the data order and dropout all follow train.seed."""
    train = write_jsonl(tmp_path / "train.jsonl", label_rows(24))
    runs = [objectives.run(tiny_run_config(tiny_model, tmp_path / str(k), "classify", train,
                                           train={"seed": 3, "max_steps": 4, "batch_size": 4, "micro_batch_size": 4},
                                           eval={"forgetting": False, "base": False}))
            for k in range(2)]
    assert losses_of(runs[0].run_dir) == losses_of(runs[1].run_dir) and len(losses_of(runs[0].run_dir)) == 4


def test_a_trainer_run_resumed_from_its_checkpoint_repeats_the_uninterrupted_losses(tiny_model, tmp_path):
    """As after a kill -9 once step 4's checkpoint was written: the Trainer's own checkpoint (weights,
    optimizer, scheduler, RNG states) and hone's validation watch carry the run on exactly."""
    import shutil

    train = write_jsonl(tmp_path / "train.jsonl", label_rows(32))
    config = tiny_run_config(tiny_model, tmp_path, "classify", train,
                             train={"seed": 5, "max_steps": 6, "batch_size": 4, "micro_batch_size": 4,
                                    "save_every": 2, "keep_checkpoints": 3, "eval_every": 2},
                             eval={"forgetting": False, "base": False})
    whole = objectives.run(config).run_dir
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "checkpoint-6")
    kept = [line for line in (killed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (killed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    resumed = objectives.run(config.model_copy(update={"output": killed}), run_dir=killed)
    assert resumed.steps == 6
    assert losses_of(killed) == pytest.approx(losses_of(whole), abs=1e-6)
