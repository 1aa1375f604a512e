"""hone plan: memory and time estimates before anything is loaded, checked against a measured run."""
import json
import os
import random
import resource
import subprocess
import sys

import pytest

from hone.errors import ConfigError
from hone.objectives.plan import make_plan, model_config


def test_plan_for_a_local_model_lists_every_method_and_refuses_bitfit_on_llama(tiny_model):
    plan = make_plan(str(tiny_model), length=64, batch=4, examples=100, threads=1)
    rows = {row.method: row for row in plan.methods}
    assert set(rows) >= {"full", "freeze", "lora", "qlora", "prompt_tuning", "ia3", "bitfit"}
    assert "bias" in rows["bitfit"].refused and not rows["bitfit"].fits
    full, lora = rows["full"], rows["lora"]
    assert full.trainable == plan.parameters
    assert full.optimizer == 2 * full.gradients == 8 * full.trainable      # fp32 AdamW moments, fp32 grads
    assert 0 < lora.trainable < full.trainable and lora.gradients < full.gradients
    assert rows["qlora"].weights < lora.weights                               # 4-bit frozen base
    assert full.seconds_per_epoch > lora.seconds_per_epoch > 0               # weight gradients cost
    assert plan.micro_batch == 4 and all(r.fits for r in plan.methods if not r.refused)


def test_a_size_plans_with_the_nearest_published_shape():
    config, described = model_config("7b")
    assert config.hidden_size == 4096 and config.num_hidden_layers == 32 and "Llama-2-7B" in described
    config, described = model_config("3b")  # no reference model of this size: layers scaled
    params = make_plan("3b", ["lora"], length=256, batch=1, gpu="l4").parameters
    assert 2.7e9 < params < 3.3e9 and "layers" in described


def test_a_gpu_plan_says_what_fits_in_its_memory():
    plan = make_plan("70b", ["full", "qlora"], length=1024, batch=1, gpu="h100")
    rows = {row.method: row for row in plan.methods}
    assert not rows["full"].fits and rows["full"].total > 80 * 1024 ** 3
    assert rows["qlora"].weights < rows["full"].weights / 6
    with pytest.raises(ConfigError, match="unknown GPU"):
        make_plan("7b", gpu="z80")


def test_plan_cli_prints_a_table_and_json(tiny_model):
    run = lambda *a: subprocess.run([sys.executable, "-m", "hone.cli", "plan", str(tiny_model), "--length", "32",  # noqa: E731
                                     "--method", "lora", "--method", "bitfit", "--threads", "1", *a],
                                    capture_output=True, text=True, env=dict(os.environ, COLUMNS="120"))
    shown = run()
    assert shown.returncode == 0, shown.stderr
    assert "lora" in shown.stdout and "cannot run bitfit" in shown.stdout
    data = json.loads(run("--json").stdout)
    assert [m["method"] for m in data["methods"]] == ["lora", "bitfit"] and data["methods"][0]["total"] > 0


@pytest.mark.slow
def test_the_estimate_is_within_25_percent_of_a_measured_lora_run(tmp_path):
    """Equal-length chats, so the micro-batch hone trains is the one the plan assumes."""
    from hone.data.render import tokenize_chat
    from hone.models.load import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    rng = random.Random(0)
    rows = []
    for _ in range(24):  # digits are one token each: every chat has the same length
        digits = " ".join(str(rng.randrange(100, 1000)) for _ in range(20))
        rows.append({"messages": [{"role": "user", "content": f"Sum these: {digits}"},
                                  {"role": "assistant", "content": str(rng.randrange(10000, 20000))}]})
    lengths = {len(tokenize_chat(tokenizer, r["messages"], 512).input_ids) for r in rows}
    assert len(lengths) == 1
    length = lengths.pop()
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A fresh parent per measurement: RUSAGE_CHILDREN of this pytest process holds earlier tests' children.
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(code)")
    train = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "hone.cli", "train", "--data",
                            str(data), "--method", "lora", "--max-steps", "2", "--batch-size", "8",
                            "--output", str(tmp_path / "run"), "--set", "data.validation_fraction=0",
                            "--set", "train.micro_batch_size=8", "--set", "eval.forgetting=false"],
                           capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    measured = int(train.stdout.strip().splitlines()[-1])
    plan = subprocess.run([sys.executable, "-m", "hone.cli", "plan", "--method", "lora", "--length", str(length),
                           "--batch", "8", "--json"], capture_output=True, text=True, env=env)
    estimate = json.loads(plan.stdout)["methods"][0]["total"]
    print(f"length {length}: estimate {estimate / 2**20:.0f} MB, measured peak {measured / 2**20:.0f} MB")
    assert abs(estimate - measured) / measured <= 0.25, (estimate / 2**20, measured / 2**20, length)
