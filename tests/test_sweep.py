"""Sweeps and merges on the tiny model: resumable after Ctrl-C and kill -9, honest about the test split,
pruning, a budget that stops, merges refused across bases, a merge's lineage and evaluation table."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import hone
from hone.errors import Interrupted
from hone.training.trackers import watching_steps


def sweep_config(tiny_model, chat_files, **train) -> dict:
    return {"model": str(tiny_model), "objective": "sft", "method": "lora",
            "data": str(chat_files["train"]), "validation": str(chat_files["validation"]),
            "test": str(chat_files["test"]),
            "sets": ["data.max_length=64", "train.batch_size=8", "train.micro_batch_size=8", "train.threads=1",
                     "eval.max_new_tokens=8", "eval.samples=0", "method.lora_r=4",
                     *[f"train.{k}={v}" for k, v in train.items()]]}


def states(result) -> list[tuple[int, str]]:
    return [(t["number"], t["state"]) for t in result.trials]


def test_interrupted_sweep_resumes_without_repeating_finished_trials(tiny_model, chat_files):
    settings = sweep_config(tiny_model, chat_files, eval_every=1)
    seen: list[int] = []

    def ctrl_c_in_the_second_trial(record: dict) -> None:
        seen.append(record["step"])
        if record["step"] == 2 and seen.count(1) == 2:  # the second trial's second step
            raise KeyboardInterrupt

    with watching_steps(ctrl_c_in_the_second_trial), pytest.raises(Interrupted):
        hone.sweep(name="s1", trials=2, space="lr,epochs", **settings)
    first = json.loads((Path(os.environ["HONE_HOME"]) / "runs" / "sweep-s1-trial-000" / "run.json").read_text())
    assert first["status"] == "succeeded"
    mtime = (Path(os.environ["HONE_HOME"]) / "runs" / "sweep-s1-trial-000" / "run.json").stat().st_mtime_ns

    result = hone.sweep(name="s1", trials=2, space="lr,epochs", **settings)
    assert states(result) == [(0, "complete"), (1, "fail"), (2, "complete")]
    retry = result.trials[2]
    assert retry["retry_of"] == 1 and retry["params"] == result.trials[1]["params"]
    assert retry["run_dir"] == result.trials[1]["run_dir"]  # resumed from its checkpoint, same run folder
    assert (Path(retry["run_dir"]) / "checkpoints").is_dir()
    # trial 0 was not run again
    assert (Path(os.environ["HONE_HOME"]) / "runs" / "sweep-s1-trial-000" / "run.json").stat().st_mtime_ns == mtime
    # selection by validation loss, then the test split once: scored with the best trial's run
    assert result.best_value == min(t["value"] for t in result.trials if t["state"] == "complete")
    assert result.test["n"] == 4 and result.test["run_dir"] in {t["run_dir"] for t in result.trials}
    assert result.best_config.is_file() and "test:" in result.best_config.read_text()
    assert result.report.is_file() and "Optimisation history" in result.report.read_text()
    # each trial is a normal registered run named after the sweep
    from hone.registry.store import list_runs

    runs = list_runs(name="s1")
    assert {r["status"] for r in runs} == {"succeeded"} and len(runs) == 2


def test_a_trial_that_reads_the_test_split_fails(tiny_model, chat_files, monkeypatch):
    """The test split is sealed while trials run: a trial given it (as a broken sweep would) cannot read it."""
    from hone.sweeps import study

    keep_test = lambda config, name: config.model_copy(update={"name": name})  # noqa: E731
    monkeypatch.setattr(study, "trial_config", keep_test)
    result = hone.sweep(name="leaky", trials=1, space="lr", **sweep_config(tiny_model, chat_files))
    assert states(result) == [(0, "fail")]
    assert "sealed" in result.trials[0]["error"] and str(chat_files["test"].name) in result.trials[0]["error"]
    assert result.test is None  # nothing was selected, nothing scored


def test_pruning_stops_a_clearly_worse_trial(tiny_model, chat_files):
    from hone.sweeps.storage import load_study

    study = load_study("prune", create=True)
    for lr in (5e-3, 5e-3, 5e-3, 30.0):
        study.enqueue_trial({"lr": lr})
    result = hone.sweep(name="prune", trials=4, space="lr", **sweep_config(tiny_model, chat_files, eval_every=1,
                                                                           epochs=3))
    assert states(result) == [(0, "complete"), (1, "complete"), (2, "complete"), (3, "pruned")]
    pruned = json.loads((Path(result.trials[3]["run_dir"]) / "run.json").read_text())
    assert pruned["status"] == "pruned" and pruned["sweep"] == {"name": "prune", "trial": 3}
    assert result.trials[3]["steps"] is None  # stopped before its end
    # a budget smaller than a measured trial starts nothing more
    again = hone.sweep(name="prune", budget=result.spent_seconds + 0.01, space="lr",
                       **sweep_config(tiny_model, chat_files, eval_every=1, epochs=3))
    assert len(again.trials) == 4 and "a trial takes" in again.stopped_by


def sweep_process(settings: dict, name: str, trials: int) -> subprocess.Popen:
    """`hone sweep` in its own process, on this test's hone home and database."""
    args = [sys.executable, "-m", "hone.cli", "sweep", "--name", name, "--trials", str(trials), "--space", "lr",
            "--model", settings["model"], "--objective", "sft", "--method", "lora", "--data", settings["data"],
            "--validation", settings["validation"], "--test", settings["test"],
            *[part for s in settings["sets"] for part in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=str(Path(hone.__file__).parents[1]), COLUMNS="200")
    return subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)


def test_two_sweep_processes_share_one_study_without_repeating_a_trial(tiny_model, chat_files):
    settings = sweep_config(tiny_model, chat_files)
    worker = sweep_process(settings, "shared", 3)
    assert worker.stderr is not None
    log = []
    for line in worker.stderr:  # the other process has started its first trial: join the study now
        log.append(line)
        if line.startswith("trial 0 "):
            break
    hone.sweep(name="shared", trials=3, space="lr", **settings)
    log.extend(worker.stderr.read())
    assert worker.wait() == 0, "".join(log)
    from hone.sweeps import show_sweep
    from hone.sweeps.storage import load_study

    result = show_sweep("shared")
    numbers = [t["number"] for t in result.trials]
    # a trial may be pruned (the median of the two finished ones is enough to stop a third), never left failed
    assert len(numbers) == len(set(numbers)) and all(t["state"] in ("complete", "pruned") for t in result.trials)
    assert any(t["state"] == "complete" for t in result.trials)
    assert 3 <= len(numbers) <= 4  # two processes may both start the last trial, never the same one
    folders = [t["run_dir"] for t in result.trials]
    assert len(set(folders)) == len(folders)
    assert len({t.user_attrs["pid"] for t in load_study("shared").trials}) == 2  # both processes ran trials


def test_killed_sweep_process_resumes_without_repeating(tiny_model, chat_files, tmp_path):
    settings = sweep_config(tiny_model, chat_files)
    process = sweep_process(settings, "k9", 2)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("trial 1 "):  # trial 0 finished, trial 1 has started: kill -9 now
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(lines)

    result = hone.sweep(name="k9", trials=2, space="lr", **settings)
    assert states(result) == [(0, "complete"), (1, "fail"), (2, "complete")]
    assert result.trials[2]["retry_of"] == 1
    assert result.test is not None and result.test["n"] == 4


def test_a_sweep_lesson_about_the_lr_is_shown_for_the_same_and_near_data(tmp_path):
    from conftest import write_chat
    from hone.objectives.advice import swept_lr
    from hone.registry.lessons import record_lesson

    data = write_chat(tmp_path / "train.jsonl", 40, 1)
    assert record_lesson(data, "close", 3e-4, 2e-4, "sft", "lora") is None  # 1.5x: nothing to tell
    assert swept_lr(data, "lora") is None
    assert record_lesson(data, "far", 1.6e-3, 2e-4, "sft", "lora")["ratio"] == 8.0
    assert "sweep 'far' on this data found lr 0.0016 best, 8x" in swept_lr(data, "lora")["text"]
    lines = data.read_text().splitlines()
    near = tmp_path / "near.jsonl"
    near.write_text("\n".join(lines[:-2] + ['{"messages": [{"role": "user", "content": "Reverse zebra"}, '
                                            '{"role": "assistant", "content": "arbez"}]}']) + "\n")
    found = swept_lr(near, "lora")
    assert found is not None and found["similarity"] < 1.0 and "near-identical data" in found["text"]
    other = write_chat(tmp_path / "other.jsonl", 40, 7)
    other.write_text(other.read_text().replace("Reverse", "Mirror"))
    assert swept_lr(other, "lora") is None and swept_lr(data, "full") is None


def tiny_run(tiny_model, train: Path, test: Path, name: str, model: Path | None = None) -> Path:
    result = hone.train(model=str(model or tiny_model), objective="sft", method="lora", data=str(train),
                        test=str(test), name=name, max_steps=2,
                        sets=["data.max_length=64", "train.batch_size=8", "train.micro_batch_size=8",
                              "method.lora_r=4", "eval.max_new_tokens=8", "eval.samples=0", "eval.forgetting=false"])
    return result.run_dir


def test_merge_refuses_runs_of_different_bases(tiny_model, chat_files, tmp_path):
    import shutil

    from hone.errors import UserError
    from hone.registry.runs import update_record

    first = tiny_run(tiny_model, chat_files["train"], chat_files["test"], "a")
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model, other_base)
    (other_base / "extra.txt").write_text("not the same folder")  # another content hash
    copy = tmp_path / "runs" / "b-run"
    shutil.copytree(first, copy)
    update_record(copy, base_model=str(other_base), base_path=str(other_base))
    with pytest.raises(UserError, match="only models tuned from the same base merge"):
        hone.merge([str(first), str(copy)], method="linear")


def test_merge_registers_lineage_to_every_parent_and_scores_each_task(tiny_model, chat_files, tmp_path):
    from conftest import write_chat
    from hone.registry.store import get_run

    a = tiny_run(tiny_model, chat_files["train"], chat_files["test"], "task-a")
    b = tiny_run(tiny_model, write_chat(tmp_path / "b.jsonl", 24, 5), write_chat(tmp_path / "bt.jsonl", 3, 6),
                 "task-b")
    result = hone.merge([str(a), str(b)], method="cat", name="ab")
    assert [row["test"] for row in result.table] == ["task-a:1", "task-b:1"]
    for row, n in zip(result.table, (4, 3)):
        assert row["n"] == n and {"base", "task-a:1", "task-b:1", "merged"} <= set(row)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["merge"]["parents"] == ["task-a:1", "task-b:1"]
    row = get_run("ab")
    assert row.parent_id == get_run("task-a").id and row.metrics["merge"]["parents"] == ["task-a:1", "task-b:1"]
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8  # cat: the two rank-4 adapters side by side
    with pytest.raises(hone.errors.UserError, match="weights gives 1 numbers for 2 runs"):
        hone.merge([str(a), str(b)], method="linear", weights=[1.0])
