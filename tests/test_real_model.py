"""A few short runs on the real embedded model (SmolLM2-135M-Instruct): the demo recipe end to end."""
import json

import pytest
import torch

from hone.objectives.demo import demo_config, demo_data
from hone.objectives.sft import run_sft

pytestmark = pytest.mark.slow


def test_demo_recipe_learns_and_the_saved_adapter_reloads(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join((demo_data() / "test.jsonl").read_text().splitlines(True)[:8]))
    cfg = demo_config(output=tmp_path / "run")
    cfg.data.test = test
    cfg.train.time_budget = None
    cfg.train.max_steps = 6
    cfg.train.batch_size = cfg.train.micro_batch_size = 8
    result = run_sft(cfg)

    losses = [json.loads(l)["loss"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    summary = result.to_json()
    assert summary["metric"] == "json_match" and 0 <= summary["base_score"] <= summary["tuned_score"] <= 1
    assert summary["run_dir"] == str(result.run_dir)

    from peft import PeftModel
    from hone.models.catalogue import resolve_model
    from hone.models.load import load_causal_lm
    from hone.methods.artifact import load_run_model

    merged, tokenizer = load_run_model(result.run_dir)
    adapter = PeftModel.from_pretrained(load_causal_lm(resolve_model("smollm2-135m-instruct"), "cpu"),
                                        result.run_dir / "adapter").eval()
    ids = tokenizer("Hi, Ana Silva here: 3 red umbrellas for 2026-05-01.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=2e-3, rtol=1e-3)
