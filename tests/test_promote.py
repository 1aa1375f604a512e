"""The next version of a served model: train --continue, promote over production, serve name@production."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hone
from hone.errors import UserError
from hone.registry import get_run, set_tag

TRAIN = {"batch_size": 8, "micro_batch_size": 8, "threads": 1, "report_to": "none"}


def train_run(tiny_model, files, tmp_path, folder, **overrides):
    options = {"data": str(files["train"]), "validation": str(files["validation"]), "test": str(files["test"]),
               "output": str(tmp_path / folder), "max_steps": 3, "lr": 3e-3, "objective": "sft",
               "data__max_length": 64, **{f"train__{k}": v for k, v in TRAIN.items()}}
    return hone.train(**{**options, **overrides})


@pytest.fixture
def parent(tiny_model, chat_files, tmp_path):
    """orders:1, a finished LoRA run on the tiny model, tagged production."""
    result = train_run(tiny_model, chat_files, tmp_path, "parent", model=str(tiny_model), name="orders")
    set_tag("orders:1", "production")
    return result


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "adapter" / "adapter_model.safetensors"))


def test_continue_starts_from_the_parents_adapter_replays_its_data_and_records_lineage(
        parent, tiny_model, chat_files, tmp_path):
    # lr so small that one step cannot move the weights: the child's adapter is then the parent's
    child = train_run(tiny_model, chat_files, tmp_path, "child", continue_from="orders@production",
                      max_steps=1, lr=1e-12, data=str(chat_files["validation"]))
    before, after = adapter_weights(parent.run_dir), adapter_weights(child.run_dir)
    assert before.keys() == after.keys()
    assert any(t.abs().max() > 0 for k, t in before.items() if "lora_B" in k)  # a fresh adapter's B is zero
    assert all(torch.allclose(before[k], after[k], atol=1e-7) for k in before)

    row = get_run("orders:2")
    assert row.parent_id == get_run("orders:1").id and Path(row.path) == child.run_dir.resolve()
    config = row.config
    assert config["model"]["name"] == str(tiny_model) and config["model"]["continue_from"] == "orders@production"
    assert config["train"]["replay"] == 0.25 and config["train"]["replay_data"] == str(chat_files["train"])
    assert config["data"]["test"] == str(chat_files["test"])          # the parent's test split, kept
    assert child.baseline == "the parent run orders@production"
    # the "base" scored before training is the parent: the same answers as the parent's tuned ones
    parent_answers = json.loads((parent.run_dir / "run.json").read_text())["results"]
    assert child.base_score == parent_answers["tuned_score"]


def test_continue_first_loss_is_the_parents_not_a_fresh_adapters(parent, tiny_model, chat_files, tmp_path):
    """Step 1's loss on the same data: from the parent's weights it is the parent's loss, well below a fresh
    adapter's (which starts as the bare base)."""
    same = {"max_steps": 1, "lr": 1e-12, "train__replay": 0.0, "data": str(chat_files["train"])}
    child = train_run(tiny_model, chat_files, tmp_path, "child", continue_from=str(parent.run_dir), **same)
    fresh = train_run(tiny_model, chat_files, tmp_path, "fresh", model=str(tiny_model), name="fresh", **same)
    first = lambda run: json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]  # noqa: E731
    assert first(child) < first(fresh) - 0.05


def test_continue_refuses_a_model_flag_and_an_unfinished_run(parent, tiny_model, chat_files, tmp_path):
    with pytest.raises(UserError, match="drop --model"):
        train_run(tiny_model, chat_files, tmp_path, "x", continue_from="orders:1", model=str(tiny_model))
    with pytest.raises(UserError, match="no run 'nothing:4'"):
        train_run(tiny_model, chat_files, tmp_path, "y", continue_from="nothing:4")
