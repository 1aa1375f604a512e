"""Objectives driven through TRL (dpo, orpo, simpo, reward, grpo) on the tiny model: a few steps,
the loss falls (grpo: the policy moves and its reward is logged), the artifact reloads identically."""
from __future__ import annotations

import json

import pytest
import torch
from objective_helpers import (SavedModelSpy, chat_rows, falls, logits, losses, preference_rows, tiny_run_config,
                               write_jsonl)

from hone.objectives import grpo, preference, reward, run
from hone.methods.heads import load_head_run
from hone.methods.artifact import load_run_model


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_preference_objective_lowers_loss_and_prefers_chosen(tiny_model, tmp_path, monkeypatch, objective):
    spy = SavedModelSpy(monkeypatch, preference)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(40))
    test = write_jsonl(tmp_path / "test.jsonl", preference_rows(10, seed=1))
    cfg = tiny_run_config(tiny_model, tmp_path, objective, pairs, data={"test": str(test)})
    result = run(cfg)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["objective"] == objective
    assert falls(losses(result.run_dir))
    assert result.record["results"]["tuned_score"] >= result.record["results"]["base_score"]
    assert result.record["results"]["reward_margin"] > 0
    reloaded, _ = load_run_model(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_reward_model_ranks_chosen_above_rejected_and_reloads(tiny_model, tmp_path, monkeypatch):
    spy = SavedModelSpy(monkeypatch, reward)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(40))
    test = write_jsonl(tmp_path / "test.jsonl", preference_rows(10, seed=1))
    cfg = tiny_run_config(tiny_model, tmp_path, "reward", pairs, data={"test": str(test)})
    result = run(cfg)
    assert falls(losses(result.run_dir))
    assert result.record["results"]["tuned_score"] == 1.0
    reloaded, _, _ = load_head_run(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_grpo_with_a_reward_function_moves_the_policy_and_logs_rewards(tiny_model, tmp_path, monkeypatch):
    spy = SavedModelSpy(monkeypatch, grpo)
    prompts = write_jsonl(tmp_path / "chat.jsonl", chat_rows(16))
    cfg = tiny_run_config(tiny_model, tmp_path, "grpo", prompts, train={"max_steps": 2},
                          grpo={"reward_function": "objective_helpers:shorter_is_better",
                                "max_completion_length": 8, "num_generations": 4})
    result = run(cfg)
    rewards = losses(result.run_dir, "reward")
    assert len(rewards) == 2 and result.record["results"]["tuned_score"] is not None
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    reloaded, _ = load_run_model(result.run_dir)
    assert not torch.allclose(logits(reloaded), logits(base), atol=1e-6)  # the update reached the artifact
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_grpo_reward_model_comes_from_a_reward_run(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(24))
    reward_run = run(tiny_run_config(tiny_model, tmp_path, "reward", pairs, train={"max_steps": 2})).run_dir
    scorer = grpo.reward_from_model(reward_run, "cpu", 64)
    prompts = [[{"role": "user", "content": "Say apple"}]] * 2
    scores = scorer(prompts=prompts, completions=[[{"role": "assistant", "content": "apple"}],
                                                  [{"role": "assistant", "content": "elppa no no"}]])
    assert len(scores) == 2 and scores[0] != scores[1]
