"""Launching several processes: accelerate with hone's shipped configs, and what hone's loop refuses."""
import json
import os
import shutil
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


def test_hones_loop_takes_fsdp2_and_refuses_fsdp1_and_deepspeed_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_launch("sft", True)  # hone's loop shards with FSDP2 itself (training/sharding.py)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp2 .or ddp. instead of FSDP1"):
        check_launch("sft", True)
    monkeypatch.setattr("hone.launch._has_gpu", lambda: True)
    check_launch("dpo", False)  # the Trainer-driven objectives take sharding from accelerate, on GPUs
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="instead of DeepSpeed"):
        check_launch("pretrain", True)
    check_launch("dpo", False)
    monkeypatch.setattr("hone.launch._has_gpu", lambda: False)  # on a CPU host the Trainer would fall back to DDP
    with pytest.raises(ConfigError, match="DeepSpeed does not run on a CPU host"):
        check_launch("dpo", False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_launch("mixture", True, "fsdp2")
    with pytest.raises(ConfigError, match="train.sharding fsdp2 applies to hone's own loop"):
        check_launch("dpo", False, "fsdp2")  # a Trainer-driven objective would silently ignore it


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


def _hone(args: list[str], out, timeout: int = 240) -> None:
    """`hone train ...` in a subprocess; a deadlocked collective fails the test at `timeout` seconds."""
    done = subprocess.run([sys.executable, "-m", "hone.cli", *args, "--output", str(out)], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def _steps(run) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _same_tensors(a, b, atol: float = 1e-4) -> None:
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype
        assert (left[name] - right[name]).abs().max().item() <= atol, name


def _fsdp_args(tiny_model, chat_files, method: str) -> list[str]:
    # batch 5 over 2 ranks: 3 and 2 examples, 2 and 1 micro-batches, so rank 1 runs a zero-weight pass
    return ["train", "--model", str(tiny_model), "--data", str(chat_files["train"]), "--method", method,
            "--max-steps", "4", "--lr", "1e-3", "--set", "train.batch_size=5", "--set", "train.micro_batch_size=2",
            "--set", "train.threads=1", "--set", "data.max_length=64", "--set", "method.lora_r=4",
            "--set", "data.validation_fraction=0.25", "--set", "train.eval_every=2", "--set", "train.report_to=none",
            "--set", "train.save_every=2", "--set", "train.keep_checkpoints=5",
            "--set", "train.max_grad_norm=1000"]  # unclipped, so that the moments show the gradients' scale


def _assert_sharded(run, launcher: str) -> None:
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "succeeded"
    # 3 FSDP groups (2 decoder layers + the root) on each of 2 ranks: sharded, not a silent replication
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "sync": "fsdp2 (fully_shard)",
                                     "launcher": launcher, "fsdp_groups_per_rank": [3, 3]}


def test_fsdp2_full_fine_tune_matches_one_process_and_resumes(tiny_model, chat_files, tmp_path):
    """Full fine-tuning sharded over 2 processes (torchrun, train.sharding): the losses, the saved model and the
    checkpoints of one process; an interrupted sharded run resumes from its checkpoint to the same end."""
    import torch

    args = _fsdp_args(tiny_model, chat_files, "full")
    one, two = tmp_path / "one", tmp_path / "two"
    _hone(args, one)
    _hone([*args, "--nproc", "2", "--set", "train.sharding=fsdp2"], two)
    _assert_sharded(two, "torchrun")
    for a, b in zip(_steps(one), _steps(two), strict=True):
        assert (a["step"], a.get("val_loss") is None) == (b["step"], b.get("val_loss") is None)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert b.get("val_loss", 0) == pytest.approx(a.get("val_loss", 0), abs=1e-4)
    _same_tensors(one / "model" / "model.safetensors", two / "model" / "model.safetensors")
    assert json.loads((two / "model" / "config.json").read_text()) == json.loads((one / "model" / "config.json").read_text())
    step2 = "checkpoints/step-0000002"
    _same_tensors(one / step2 / "trainable.safetensors", two / step2 / "trainable.safetensors")
    left, right = (torch.load(run / step2 / "optimizer.pt", weights_only=False) for run in (one, two))
    assert left["param_groups"] == right["param_groups"] and sorted(left["state"]) == sorted(right["state"])
    for i, state in left["state"].items():  # AdamW's moments scale with the gradients: summed, not averaged
        for key, value in state.items():
            torch.testing.assert_close(right["state"][i][key], value, rtol=1e-3, atol=1e-9)

    # A crash after step 2: only the step-2 checkpoint survives; resume under FSDP2 ends where the run did.
    final = (two / "model" / "model.safetensors").read_bytes()
    shutil.rmtree(two / "checkpoints" / "step-0000004")
    shutil.rmtree(two / "model")
    done = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--resume", str(two), "--nproc", "2"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s["loss"] for s in _steps(two)] == pytest.approx([s["loss"] for s in _steps(one)], abs=1e-4)
    (tmp_path / "final.safetensors").write_bytes(final)
    _same_tensors(tmp_path / "final.safetensors", two / "model" / "model.safetensors")


def test_accelerate_fsdp2_lora_matches_one_process(tiny_model, chat_files, tmp_path):
    """LoRA sharded by `--launcher accelerate --accelerate-config fsdp2` on a CPU host: 2 processes on gloo,
    frozen base weights in bf16, a long shared system prompt, the same losses and adapter as one process. Fused LoRA is off in both
    (sharding turns it off: its concatenated q/k/v tensor cannot be sharded) so the arithmetic is the same."""
    # A long common system prompt: sharded runs must not compute it once per micro-batch (shared prefix runs
    # the layers twice before backward, which FSDP2's resharding breaks); the single process is told not to
    # either, since the two ways differ by bf16 rounding of the frozen layers, which AdamW amplifies to ~5e-4.
    prompt = " ".join(["Answer with the JSON object only, the reversed word under the key reversed."] * 6)
    args = [*_fsdp_args(tiny_model, chat_files, "lora"), "--set", "train.fused_lora=false", "--system-prompt", prompt,
            "--set", "data.max_length=192"]
    one, two = tmp_path / "one", tmp_path / "two"
    _hone([*args, "--set", "train.shared_prefix=false"], one)
    _hone([*args, "--nproc", "2", "--launcher", "accelerate", "--accelerate-config", "fsdp2"], two)
    _assert_sharded(two, "accelerate")
    assert [s["loss"] for s in _steps(two)] == pytest.approx([s["loss"] for s in _steps(one)], abs=1e-4)
    assert [s.get("val_loss") for s in _steps(two)] == pytest.approx([s.get("val_loss") for s in _steps(one)], abs=1e-4)
    _same_tensors(one / "adapter" / "adapter_model.safetensors", two / "adapter" / "adapter_model.safetensors")
    assert (two / "checkpoints" / "best" / "trainable.safetensors").is_file()  # restore-best gathered its weights


def test_fsdp2_keeps_the_validation_best_weights_like_one_process(tiny_model, chat_files, tmp_path):
    """Restore-best under sharding: the best step's weights are gathered when saved and put back after
    training; a high learning rate makes a later step worse, so the end differs from the last step."""
    args = ["train", "--model", str(tiny_model), "--data", str(chat_files["train"]), "--method", "full",
            "--max-steps", "6", "--lr", "0.05", "--set", "train.batch_size=5", "--set", "train.micro_batch_size=2",
            "--set", "train.threads=1", "--set", "data.max_length=64", "--set", "data.validation_fraction=0.25",
            "--set", "train.eval_every=1", "--set", "train.report_to=none"]
    one, two = tmp_path / "one", tmp_path / "two"
    _hone(args, one)
    _hone([*args, "--nproc", "2", "--set", "train.sharding=fsdp2"], two)
    _assert_sharded(two, "torchrun")
    results = [json.loads((run / "run.json").read_text())["results"] for run in (one, two)]
    assert results[0]["best_step"] == results[1]["best_step"] < 6
    assert results[1]["best_val_loss"] == pytest.approx(results[0]["best_val_loss"], abs=1e-4)
    _same_tensors(one / "model" / "model.safetensors", two / "model" / "model.safetensors")


def test_a_user_error_under_nproc_ends_in_its_one_line_without_the_launchers_traceback(tiny_model, chat_files, tmp_path):
    for launcher in ("torchrun", "accelerate"):
        done = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--objective", "dpo", "--model", str(tiny_model),
                               "--data", str(chat_files["train"]), "--set", "train.sharding=fsdp2", "--nproc", "2",
                               "--launcher", launcher, "--output", str(tmp_path / launcher)],
                              capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 2, done.stderr[-3000:]
        assert "error: train.sharding fsdp2 applies to hone's own loop" in done.stderr
        assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr[-3000:]
