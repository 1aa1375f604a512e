"""The method x objective matrix: every method trains a few steps with every objective it applies to,
the loss falls, and the run's saved artifact reloads to the same outputs; every other pair (and a
method the model cannot take, such as bitfit on a Llama) fails in one line before any work.

The pairs come from the methods registry's one table (`method_objective_pairs`). Each run trains on
its whole (tiny) training set every step, so "the loss falls" compares the same batch before and after.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from objective_helpers import PROBE, WORDS, write_jsonl
from test_methods import SMALL, TEST_LR, tiny_biased_model  # noqa: F401 (fixture)

from hone import objectives
from hone.config import build_config
from hone.errors import ConfigError
from hone.objectives.registry import method_objective_pairs
from hone.methods.heads import load_head_run
from hone.methods.artifact import load_run_model

LR = {**TEST_LR, "probe": 1e-2}
LR_WITH_HEAD = {**LR, "ia3": 0.3}  # ia3 at 1.0 overshot on ner (1.44 -> 0.06 -> 3.92)
HEADS = {"classify", "ner", "reward"}
VALID, INVALID = method_objective_pairs(), method_objective_pairs(valid=False)
MODULES = ["sft", "pretrain", "classify", "ner", "preference", "reward", "grpo", "mixture"]  # distill saves through sft


def rows_for(objective: str) -> list[dict]:
    """Two training rows for `objective` (two distinct ones where labels need two classes)."""
    if objective in ("sft", "grpo", "distill"):
        return [{"messages": [{"role": "user", "content": "Say apple"}, {"role": "assistant", "content": "apple"}]}] * 2
    if objective == "pretrain":
        return [{"text": " ".join(WORDS)}]
    if objective == "classify":
        return [{"text": "great lovely perfect parcel", "label": "good"}, {"text": "broken late awful parcel", "label": "bad"}]
    if objective == "ner":
        return [{"tokens": ["Maria", "ordered", "3", "mugs"], "tags": ["B-PER", "O", "B-QTY", "B-ITEM"]}] * 2
    return [{"prompt": "Say apple", "chosen": "apple", "rejected": "elppa no no"}] * 2  # dpo/orpo/simpo/reward


def matrix_config(model: Path, tmp_path: Path, method: str, objective: str):
    """Three full-batch steps of 2 examples at a rate that moves a random 2-layer model; fp32."""
    sections: dict = {}
    if objective == "mixture":
        chat = write_jsonl(tmp_path / "chat.jsonl", rows_for("sft")[:1])
        text = write_jsonl(tmp_path / "text.jsonl", rows_for("pretrain"))
        sections["mixture"] = [{"train": str(chat), "weight": 1, "validation": str(chat)},
                               {"train": str(text), "weight": 1, "validation": str(text)}]
        data = {}
    else:
        train = write_jsonl(tmp_path / "train.jsonl", rows_for(objective))
        data = {"train": str(train), "validation": str(train)}
        if objective not in ("sft", "distill"):  # without a test file they skip generation; the others score validation
            data["test"] = str(train)
    if objective == "distill":  # the tiny model teaches itself: the answers and the KL term run, cheaply
        sections["distill"] = {"teacher": str(model), "max_new_tokens": 2, "kl_weight": 1.0}
    if objective == "grpo":
        sections["grpo"] = {"reward_function": "objective_helpers:shorter_is_better", "num_generations": 2,
                            "max_completion_length": 4}
    return build_config({
        "objective": objective, "model": {"name": str(model)}, "output": str(tmp_path / "run"),
        "data": {"max_length": 64, "system_prompt": "Be brief.", **data}, "pretrain": {"block_size": 16},
        "method": {"name": method, **SMALL},
        "train": {"lr": (LR_WITH_HEAD if objective in HEADS else LR)[method], "max_steps": 3, "batch_size": 2, "micro_batch_size": 2, "threads": 1,
                  "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant",
                  **({} if objective == "grpo" else {"eval_every": 100})},  # grpo refuses validation settings
        "eval": {"base": False, "forgetting": False, "max_new_tokens": 2}, **sections})


class SavedModel:
    """Keeps the in-memory model each objective hands to save_artifact, to compare with its reload."""

    def __init__(self, monkeypatch):
        from hone.objectives import lifecycle as record

        self.model = None
        original = record.save_artifact

        def keep(model, tokenizer, run_dir, method):
            self.model = model
            return original(model, tokenizer, run_dir, method)

        for name in MODULES:
            monkeypatch.setattr(f"hone.objectives.{name}.save_artifact", keep)


@torch.no_grad()
def outputs(model) -> torch.Tensor:
    model.eval()
    return model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits.float()


def logged(run_dir: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


@pytest.mark.parametrize("method,objective", VALID, ids=[f"{m}-{o}" for m, o in VALID])
def test_method_trains_with_objective_and_its_artifact_reloads(method, objective, tiny_model, tiny_biased_model,
                                                               tmp_path, monkeypatch):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    saved = SavedModel(monkeypatch)
    model = tiny_biased_model if method == "bitfit" else tiny_model  # Llama has no biases
    result = objectives.run(matrix_config(model, tmp_path, method, objective))
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["method"] == method
    folder = result.run_dir / ("model" if method == "full" else "adapter")
    if method != "full":
        assert json.loads((folder / "hone_method.json").read_text())["method"] == method
    if objective == "grpo":  # its loss is ~0 by construction (group-normalised advantages): the reward moves
        assert len(logged(result.run_dir, "reward")) == 3
    else:
        losses = logged(result.run_dir, "loss")
        assert len(losses) == 3 and losses[-1] < losses[0], losses
    reloaded = load_head_run(result.run_dir)[0] if objective in HEADS else load_run_model(result.run_dir)[0]
    torch.testing.assert_close(outputs(reloaded), outputs(saved.model), atol=1e-5, rtol=1e-5)


def fails_before_work(cfg, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        objectives.run(cfg)
    assert "\n" not in str(info.value)
    assert not Path(cfg.output).exists()  # no run folder, no checkpoints, no run.json


@pytest.mark.parametrize("method,objective", INVALID, ids=[f"{m}-{o}" for m, o in INVALID])
def test_method_that_does_not_apply_to_objective_fails_in_one_line(method, objective, tiny_model, tmp_path):
    fails_before_work(matrix_config(tiny_model, tmp_path, method, objective),
                      rf"method '{method}' does not apply to objective '{objective}'.*choose one of")


@pytest.mark.parametrize("objective", sorted(o for m, o in VALID if m == "bitfit"))
def test_bitfit_on_a_model_without_biases_fails_in_one_line(objective, tiny_model, tmp_path):
    fails_before_work(matrix_config(tiny_model, tmp_path, "bitfit", objective),
                      r"bitfit trains bias terms only, and llama models have none; it applies to BERT/MiniLM")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (biases everywhere, as MiniLM has) with the embedded MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hone.models.catalogue import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # no dropout: the same batch gives the same loss
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method,objective", [(m, o) for m in ("bitfit", "probe", "adapters") for o in ("classify", "ner")])
def test_encoder_methods_train_and_reload_on_a_bert(method, objective, tiny_bert, tmp_path, monkeypatch):
    saved = SavedModel(monkeypatch)
    result = objectives.run(matrix_config(tiny_bert, tmp_path, method, objective))
    losses = logged(result.run_dir, "loss")
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    reloaded = load_head_run(result.run_dir)[0]
    torch.testing.assert_close(outputs(reloaded), outputs(saved.model), atol=1e-5, rtol=1e-5)
