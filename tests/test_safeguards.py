"""Early stopping, keeping the best weights, the overfitting alarm, and resuming after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from hone.objectives.sft import run_sft
from hone.training.checkpoint import list_checkpoints, save_checkpoint
from hone.training.safeguards import ValidationWatch, best_dir
from test_train import tiny_config


def test_watch_stops_after_patience_and_remembers_the_best():
    watch = ValidationWatch(patience=2)
    assert watch.observe(1, 2.0, 1.0).improved
    assert watch.observe(2, 1.9, 0.8).improved
    assert not watch.observe(3, 1.8, 0.85).improved and not watch.should_stop
    assert not watch.observe(4, 1.7, 0.9).improved and watch.should_stop
    assert (watch.best_step, watch.best_loss) == (2, 0.8)
    assert ValidationWatch.from_state(json.loads(json.dumps(watch.state()))) == watch


def test_overfitting_alarm_needs_train_down_and_validation_up_in_a_row():
    watch = ValidationWatch(patience=None, alarm_after=2)
    seen = [watch.observe(step, train, val).overfitting
            for step, train, val in [(1, 2.0, 1.0), (2, 1.5, 1.1), (3, 1.0, 1.2), (4, 0.9, 1.1), (5, 0.8, 1.3)]]
    assert seen == [False, False, True, False, False]
    assert watch.alarms == [3]


def write_conflicting(path, answer, n):
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"messages": [{"role": "user", "content": f"Say the word {i % 4}"},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    return path


def test_early_stopping_stops_and_ends_with_the_best_weights(tiny_model, chat_files, tmp_path):
    # Validation wants the opposite answer to training: its loss rises once training bites.
    chat_files["train"] = write_conflicting(tmp_path / "t.jsonl", "yes indeed", 32)
    chat_files["validation"] = write_conflicting(tmp_path / "v.jsonl", "no never", 8)
    cfg = tiny_config(tiny_model, chat_files, tmp_path, max_steps=30, eval_every=1, lr=1e-2,
                      early_stopping_patience=2)
    cfg.method.name = "full"
    cfg.eval.base = False
    cfg.data.test = None
    result = run_sft(cfg)
    record = json.loads((result.run_dir / "run.json").read_text())["results"]
    assert record["stopped_by"] == "early_stopping" and record["steps"] < 30
    assert record["best_step"] < record["steps"] and record["best_val_loss"] < record["val_loss"]
    best = load_file(best_dir(result.run_dir) / "trainable.safetensors")
    final = load_file(result.run_dir / "model" / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert (best[name] == final[name]).all()


def test_a_checkpoint_that_fails_mid_write_never_becomes_the_latest(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import hone.training.checkpoint as checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    optimizer = __import__("torch").optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, {"step": 1}, keep=3)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, model, optimizer, {"step": 2}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, chat_files, tmp_path):
    steps = 16
    args = ["--model", str(tiny_model), "--data", str(chat_files["train"]), "--validation",
            str(chat_files["validation"]), "--max-steps", str(steps), "--save-steps", "1",
            "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2", "--set", "train.threads=1",
            "--set", "data.max_length=64", "--set", "method.lora_r=4", "--lr", "5e-3", "--set", "eval_every=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hone.cli", "train", *args, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not list_checkpoints(killed) or list_checkpoints(killed)[-1].name < "step-0000005":
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = int(list_checkpoints(killed)[-1].name.split("-")[1])
    assert stopped_at < steps

    resumed = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--resume", str(killed)],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = subprocess.run([sys.executable, "-m", "hone.cli", "train", *args, "--output", str(tmp_path / "whole")],
                           capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    def losses(run):
        return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses(killed)) == steps
    assert losses(killed) == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)


def test_two_processes_on_gloo_match_one_process_with_the_same_global_batch(tiny_model, chat_files, tmp_path):
    from safetensors.torch import load_file

    args = ["train", "--model", str(tiny_model), "--data", str(chat_files["train"]), "--validation",
            str(chat_files["validation"]), "--max-steps", "4", "--set", "train.batch_size=8",
            "--set", "train.micro_batch_size=2", "--set", "train.threads=1", "--set", "data.max_length=64",
            "--set", "method.lora_r=4", "--lr", "2e-4", "--set", "eval_every=2"]
    # A small lr: Adam turns float-order noise in a near-zero gradient into a step of ~lr, so the
    # weight tolerance below only means something when lr x steps is under it.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        done = subprocess.run([sys.executable, "-m", "hone.cli", *args, "--nproc", str(nproc), "--output", str(out)],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = out
    record = json.loads((runs[2] / "run.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "sync": "gradient all-reduce",
                                     "launcher": "torchrun"}
    assert json.loads((runs[1] / "run.json").read_text())["distributed"] is None

    def metrics(run):
        return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    one, two = metrics(runs[1]), metrics(runs[2])
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], abs=1e-4)
    assert [m.get("val_loss") for m in two] == pytest.approx([m.get("val_loss") for m in one], abs=1e-4)
    weights = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (runs[1], runs[2])]
    for name in weights[0]:
        difference = weights[0][name] - weights[1][name]
        assert difference.abs().max() < 1e-4, name
        if "lora_B" in name:  # initialised at zero: the weights are the training's updates
            assert difference.norm() < 0.01 * weights[0][name].norm(), name


def test_a_registered_tuned_model_is_a_base_for_the_next_run(tiny_model, chat_files, tmp_path):
    cfg = tiny_config(tiny_model, chat_files, tmp_path, max_steps=2)
    cfg.name = "support-bot"
    cfg.data.test = None
    first = run_sft(cfg).run_dir
    done = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--model", "support-bot:1", "--name", "support-bot", "--data",
                           str(chat_files["train"]), "--max-steps", "1", "--set", "data.max_length=64",
                           "--set", "train.threads=1", "--output", str(tmp_path / "second")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "second" / "run.json").read_text())
    assert record["base_model"] == str(first / "merged")
    assert record["parent"] == str(first.resolve())
    assert (first / "merged" / "config.json").is_file()
    shown = subprocess.run([sys.executable, "-m", "hone.cli", "runs", "show", "support-bot:2", "--json"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    row = json.loads(shown.stdout)
    assert row["parent_id"] is not None
    assert [entry.split(" ")[0] for entry in row["lineage"]] == ["support-bot:2", "support-bot:1"]


def test_ctrl_c_during_validation_checkpoints_the_step_with_its_metrics_line(tiny_model, chat_files, tmp_path,
                                                                               monkeypatch):
    """Ctrl-C mid-validation: Interrupted names the step, its checkpoint holds it, metrics.jsonl has its
    loss, and a resume carries on from there to the end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hone.training.loop as loop
    from hone.config import build_config
    from hone.data.render import tokenize_chat
    from hone.errors import Interrupted
    from hone.hardware import pick_hardware
    from hone.methods import apply_method

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples, val = ([tokenize_chat(tokenizer, json.loads(l)["messages"], 64) for l in chat_files[name].read_text().splitlines()]
                  for name in ("train", "validation"))
    cfg = build_config({"method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
                        "train": {"batch_size": 8, "micro_batch_size": 4, "max_steps": 5, "eval_every": 2,
                                  "save_every": 10, "early_stopping_patience": None}})
    validations = []

    def validation_interrupted_the_second_time(*args, **kwargs):
        validations.append(1)
        if len(validations) == 2:
            raise KeyboardInterrupt
        return real_validation_loss(*args, **kwargs)

    real_validation_loss = loop.validation_loss
    monkeypatch.setattr(loop, "validation_loss", validation_interrupted_the_second_time)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def run(resume: bool):
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), cfg.method)
        return loop.train_loop(model, examples, val, cfg.train, 1e-3, pick_hardware("fp32", 1), run_dir,
                               tokenizer.pad_token_id, resume=resume)

    with pytest.raises(Interrupted) as stopped:
        run(resume=False)
    assert stopped.value.step == 3  # validations after steps 2 and 3 (the end of the 24 examples' first epoch)
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-0000003"]

    def steps():
        return [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps() == [1, 2, 3]
    assert run(resume=True).steps == 5
    assert steps() == [1, 2, 3, 4, 5]
