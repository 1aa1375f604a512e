"""The method x objective matrix for sft: each method runs the whole SFT procedure on a tiny model,
on this machine's default precision (frozen linears in bf16 where the CPU has it), and the run's
saved artifact is what `hone generate` loads."""
import json
from pathlib import Path

import pytest

from hone.config import build_config
from hone.methods import METHODS
from hone.evaluation.generate import generate_batch
from hone.objectives.sft import run_sft
from hone.methods.artifact import load_run_model
from test_methods import SMALL, TEST_LR, tiny_biased_model  # noqa: F401 (fixture)

SFT_METHODS = [name for name, m in METHODS.items() if m.applies(head=False, own_loop=True)]


@pytest.mark.parametrize("name", SFT_METHODS)
def test_sft_with_each_method_trains_saves_and_reloads(name, tiny_model, tiny_biased_model, chat_files, tmp_path):
    if name == "qlora":
        pytest.importorskip("bitsandbytes")
    model = tiny_biased_model if name == "bitfit" else tiny_model
    cfg = build_config({
        "model": {"name": str(model)}, "output": str(tmp_path / "run"),
        "data": {"train": str(chat_files["train"]), "validation": str(chat_files["validation"]),
                 "test": str(chat_files["test"]), "max_length": 64},
        "method": {"name": name, **SMALL},
        "train": {"lr": TEST_LR[name], "batch_size": 8, "micro_batch_size": 4, "threads": 1, "max_steps": 3},
        "eval": {"max_new_tokens": 6, "base": False},
    })
    result = run_sft(cfg)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["method"] == name
    assert 0 < record["results"]["trainable_parameters"] <= record["results"]["total_parameters"]
    assert record["results"]["memory_estimate_bytes"] > 0
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and all(s["loss"] > 0 for s in steps)
    folder = result.run_dir / ("model" if name == "full" else "adapter")
    assert json.loads((folder / "hone_method.json").read_text())["method"] == name
    # `hone generate` on the run gives exactly the answers the tuned evaluation scored.
    tuned, tokenizer = load_run_model(result.run_dir)
    prompts = [[{"role": "user", "content": json.loads(line)["messages"][0]["content"]}]
               for line in Path(record["data"]["test"]).read_text().splitlines()]
    assert generate_batch(tuned, tokenizer, prompts, 6, batch_size=32) == record["tuned_answers"]
