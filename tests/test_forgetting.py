import json
import os
import subprocess
import sys

import pytest
import torch

from hone.config import build_config
from hone.evaluation.forgetting import (ProbeItem, ProbeScores, choice_logprobs, compare_probe, encode_items,
                                      load_probe, paired_bootstrap, score_probe)
from hone.objectives.sft import run_sft
from hone.training.regularise import kl_to_base, lr_warning
from hone.training.replay import general_chats_path, mix_replay, replay_count


def whole_sequence_logprob(model, prompt: list[int], answer: list[int]) -> float:
    """By hand: one unpadded forward over prompt + answer, summing log P(answer token | everything before)."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(answer))


def test_probe_scorer_equals_hand_computed_log_likelihood_with_end_of_turn(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    items = [ProbeItem("a", "arithmetic", "What is 1 + 1?", ["2", "12", "two"], 0),
             ProbeItem("b", "knowledge", "Capital of France? Answer in a few words please.",
                       ["Paris", "It is Lyon, of course"], 0)]
    encoded = encode_items(tokenizer, items)
    # The answer is the choice followed by the end-of-turn token, so "1" cannot win just by being a prefix.
    assert encoded[0][1][1][-1] == tokenizer.eos_token_id
    batched = choice_logprobs(model, encoded, tokenizer.pad_token_id, batch_size=2)
    for (prompt, answers), scores in zip(encoded, batched):
        assert len(scores) == len(answers)
        for answer, score in zip(answers, scores):
            assert score == pytest.approx(whole_sequence_logprob(model, prompt, answer), abs=1e-3)
    result = score_probe(model, tokenizer, items)
    best = [max(range(len(s)), key=s.__getitem__) for s in batched]
    assert result.correct == [b == item.answer for b, item in zip(best, items)]
    assert result.gold_logprob == pytest.approx([s[item.answer] for s, item in zip(batched, items)])


def test_shipped_probe_has_a_few_hundred_items_in_four_categories():
    items = load_probe()
    assert 250 <= len(items) <= 400
    assert {i.category for i in items} == {"knowledge", "arithmetic", "common_sense", "instructions"}
    assert len({i.id for i in items}) == len(items)
    assert all(len(set(i.choices)) == len(i.choices) >= 2 for i in items)


def test_replay_chats_share_no_prompt_with_the_probe():
    probe_prompts = {i.prompt.lower() for i in load_probe()}
    chats = [json.loads(l) for l in general_chats_path().read_text().splitlines()]
    assert len(chats) >= 200
    users = {c["messages"][0]["content"].lower() for c in chats}
    assert not users & probe_prompts


def test_replay_makes_up_the_requested_share_of_training():
    from hone.data.records import ChatExample

    train = [ChatExample([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}])
             for i in range(60)]
    mixed = mix_replay(train, 0.25, seed=1)
    assert len(mixed) == 80 and replay_count(60, 0.25) == 20
    assert mixed[:60] == train and mix_replay(train, 0.0, 1) == train
    assert [m.messages for m in mix_replay(train, 0.25, 1)] == [m.messages for m in mixed]  # seeded


def test_paired_bootstrap_interval_covers_the_true_shift():
    assert paired_bootstrap([1.0] * 50, [1.0] * 50) == (0.0, 0.0)
    base = [100.0] * 100
    tuned = [100.0] * 80 + [0.0] * 20      # 20 of 100 items lost
    low, high = paired_bootstrap(base, tuned, seed=3)
    assert low < 20 < high and low > 10 and high < 30


def test_compare_probe_counts_lost_and_gained_items():
    base = ProbeScores(["1", "2", "3", "4"], ["x", "x", "y", "y"], [True, True, False, True], [-1, -1, -3, -1])
    tuned = ProbeScores(["1", "2", "3", "4"], ["x", "x", "y", "y"], [True, False, True, False], [-1, -2, -2, -3])
    result = compare_probe(base, tuned, max_forgetting=10)
    assert (result.base, result.tuned, result.drop) == (75.0, 50.0, 25.0)
    assert (result.lost, result.gained, result.passed) == (2, 1, False)
    assert result.gold_logprob_drop == pytest.approx(0.5)  # (-6 - -8) / 4
    assert result.categories == {"x": {"n": 2, "base": 100.0, "tuned": 50.0}, "y": {"n": 2, "base": 50.0, "tuned": 50.0}}


def test_learning_rate_warning_depends_on_method():
    assert lr_warning("full", 5e-4) and "full" in lr_warning("full", 5e-4)
    assert lr_warning("full", 2e-5) is None
    assert lr_warning("lora", 1e-3) is None and lr_warning("lora", 5e-3)


def test_kl_to_base_is_zero_for_an_untrained_adapter_and_grows_as_it_trains(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    batch = {"input_ids": torch.tensor([[1, 500, 600, 700, 800, 2]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    keep = torch.tensor([[False, False, True, True, True]])
    from hone.training.loss import trained_logits

    penalty = kl_to_base(1.0)
    assert kl_to_base(0.0) is None
    assert float(penalty(model, batch, keep, trained_logits(model, batch, keep))) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    value = penalty(model, batch, keep, trained_logits(model, batch, keep))
    assert float(value) > 1e-3
    value.backward()  # gradients reach the adapters, not the frozen teacher pass
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


# --- the gate on real runs of a tiny model --------------------------------------------------------------

ANSWERS = [("Name a fruit.", "apple", "river"), ("Name a colour.", "green", "table"), ("Name an animal.", "tiger", "spoon"),
           ("Name a city.", "paris", "seven"), ("Name a drink.", "water", "chair"), ("Name a tool.", "hammer", "cloud")]


@pytest.fixture
def knowing_base(tiny_model, tmp_path):
    """The tiny model fully fine-tuned until it answers a 6-item probe right: a base with something to forget."""
    train = tmp_path / "know.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                             + "\n" for q, a, _ in ANSWERS * 8))
    validation = tmp_path / "know-val.jsonl"
    validation.write_text("".join(train.read_text().splitlines(keepends=True)[:6]))
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"id": f"p{i}", "category": "toy", "prompt": q, "choices": [wrong, right],
                                         "answer": 1}) + "\n" for i, (q, right, wrong) in enumerate(ANSWERS)))
    cfg = build_config({"model": {"name": str(tiny_model)}, "output": str(tmp_path / "know"),
                        "data": {"train": str(train), "validation": str(validation), "max_length": 64},
                        "method": {"name": "full"},
                        "train": {"lr": 1e-2, "max_steps": 40, "batch_size": 8, "micro_batch_size": 8, "threads": 1,
                                  "eval_every": 100}, "eval": {"forgetting": False}})
    run = run_sft(cfg).run_dir
    return run / "model", probe


def gated_run(base, probe, chat_files, tmp_path, name, **train):
    cfg = build_config({"model": {"name": str(base)}, "output": str(tmp_path / name),
                        "data": {"train": str(chat_files["train"]), "validation": str(chat_files["validation"]),
                                 "max_length": 64},
                        "train": {"batch_size": 8, "micro_batch_size": 8, "threads": 1, "eval_every": 100, **train},
                        "eval": {"forgetting": True, "probe": str(probe), "max_forgetting": 10}})
    return cfg


def test_forgetting_gate_trips_on_a_destructive_run_and_stays_quiet_on_a_gentle_one(knowing_base, chat_files, tmp_path):
    base, probe = knowing_base
    gentle = gated_run(base, probe, chat_files, tmp_path, "gentle", lr=1e-5, max_steps=3)
    destructive = gated_run(base, probe, chat_files, tmp_path, "destructive", lr=3e-2, max_steps=12)
    destructive.method.name = "full"

    quiet = run_sft(gentle).forgetting
    assert quiet["base"] == 100.0 and quiet["passed"] and quiet["drop"] <= 10
    # Through the CLI: the run is saved, and the exit status (3) tells scripts it failed its check.
    from hone.config import to_yaml

    config_file = tmp_path / "destructive.yaml"
    config_file.write_text(to_yaml(destructive))
    done = subprocess.run([sys.executable, "-m", "hone.cli", "train", str(config_file)], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Forgetting check failed" in done.stdout
    record = json.loads((tmp_path / "destructive" / "run.json").read_text())
    forgetting = record["forgetting"]
    assert not forgetting["passed"] and forgetting["drop"] > 10
    assert forgetting["lost"] >= 2 and set(forgetting) >= {"base", "tuned", "drop", "ci", "gate", "passed"}
    assert "high for full" in record["warnings"][0]
