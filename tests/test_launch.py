"""Launching several processes: accelerate with hone's shipped configs, and what hone's loop refuses."""
import json
import os
import subprocess
import sys

import pytest

from hone.errors import ConfigError
from hone.launch import CONFIGS, accelerate_config, check_launch, launch_command


def test_every_shipped_config_exists_and_the_ddp_one_starts_n_processes_on_cpu():
    for name in CONFIGS:
        assert accelerate_config(name).is_file()
    command, env = launch_command(3, ["train", "x.yaml"], "accelerate", "ddp")
    assert command[command.index("--num_processes") + 1] == "3" and command[-2:] == ["train", "x.yaml"]
    assert env.get("ACCELERATE_USE_CPU") == "1"  # without it accelerate starts one process on CPU
    with pytest.raises(ConfigError, match="no accelerate config"):
        accelerate_config("zero9")


def test_hones_loop_refuses_a_sharding_launch_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="ddp config instead of FSDP2"):
        check_launch("sft")
    check_launch("dpo")  # the Trainer-driven objectives take sharding from accelerate


def test_accelerate_launch_with_the_ddp_config_matches_one_process(tiny_model, chat_files, tmp_path):
    args = ["train", "--model", str(tiny_model), "--data", str(chat_files["train"]), "--max-steps", "3",
            "--set", "train.batch_size=8", "--set", "train.micro_batch_size=2", "--set", "train.threads=1",
            "--set", "data.max_length=64", "--set", "method.lora_r=4", "--lr", "2e-4",
            "--set", "data.validation_fraction=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for name, extra in (("one", []), ("accelerate", ["--nproc", "2", "--launcher", "accelerate"])):
        out = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "hone.cli", *args, *extra, "--output", str(out)],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = out
    record = json.loads((runs["accelerate"] / "run.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "sync": "gradient all-reduce",
                                     "launcher": "accelerate"}

    def losses(run):
        return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses(runs["accelerate"]) == pytest.approx(losses(runs["one"]), abs=1e-4)


def test_a_trainer_driven_objective_runs_as_two_processes_with_one_record(tiny_model, tmp_path):
    """DPO through TRL under torchrun: the same global batch per step, rank 0 alone logs, saves and scores."""
    from pathlib import Path

    import hone

    data = Path(hone.__file__).parent / "datasets" / "order-preferences"
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join((data / "train.jsonl").read_text().splitlines(keepends=True)[:16]))
    test.write_text("".join((data / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--objective", "dpo", "--model", str(tiny_model),
                           "--data", str(train), "--test", str(test), "--max-steps", "2", "--batch-size", "4",
                           "--set", "train.micro_batch_size=2", "--set", "train.threads=1", "--set", "data.max_length=96",
                           "--set", "data.validation_fraction=0", "--set", "method.lora_r=4", "--nproc", "2",
                           "--output", str(out)], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "sync": "Trainer (DDP)", "launcher": "torchrun"}
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]            # one line per step: rank 1 writes nothing
    assert steps[-1]["epoch"] == pytest.approx(2 * 4 / 16)  # 4 examples per step in all, not 4 per process
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
