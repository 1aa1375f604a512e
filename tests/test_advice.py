"""Recipe advice: hone reads the data, picks the recipe, says why, follows it by default, and a classifier
trained from chat data answers, generates and scores like a chat model."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from objective_helpers import label_rows, preference_rows, tag_rows, text_rows, write_jsonl

from hone.objectives.advice import advise, apply_advice
from hone.config import build_config

TEAMS = {"shipping": ["where is my parcel", "the courier lost the box", "tracking has not moved"],
         "billing": ["I was charged twice", "the invoice is wrong", "my card was declined"],
         "returns": ["I want to send the mug back", "how do I get a refund", "the lamp arrived broken"]}


def routing_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat examples whose answer is one of three team names: a closed label set."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        team = rng.choice(sorted(TEAMS))
        rows.append({"messages": [{"role": "system", "content": "Route the message to a team."},
                                  {"role": "user", "content": f"Hi, {rng.choice(TEAMS[team])}. Thanks {rng.randint(1, 99)}"},
                                  {"role": "assistant", "content": team}]})
    return rows


def free_form_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean"]
    return [{"messages": [{"role": "user", "content": f"Write about {w}"},
                          {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(12))}]}
            for w in (rng.choice(words) for _ in range(n))]


def json_rows(n: int) -> list[dict]:
    """Few distinct short answers, but JSON: structured output to generate, not labels."""
    return [{"messages": [{"role": "user", "content": f"Reverse {w}"},
                          {"role": "assistant", "content": json.dumps({"reversed": w[::-1]})}]}
            for w in ["apple", "river", "stone"] * (n // 3)]


def config_for(tiny_model, **data):
    return build_config({"model": {"name": str(tiny_model)}, **({"data": data} if data else {})})


@pytest.mark.parametrize("rows, objective, method", [
    (routing_rows(150), "classify", "lora"),
    (routing_rows(40), "classify", "probe"),
    (label_rows(150), "classify", "lora"),
    (text_rows(30), "pretrain", "lora"),
    (preference_rows(30), "dpo", "lora"),
    (tag_rows(30), "ner", "lora"),
    (free_form_rows(60), "sft", "lora"),
    (json_rows(60), "sft", "lora"),
])
def test_advice_picks_the_objective_and_method_for_each_data_shape(tiny_model, tmp_path, rows, objective, method):
    advice = advise(write_jsonl(tmp_path / "data.jsonl", rows), config_for(tiny_model))
    assert (advice.objective, advice.method, advice.source) == (objective, method, "advised")
    assert advice.n_examples == len(rows) and advice.lr > 0 and advice.epochs >= 1 and advice.seconds > 0
    assert 64 <= advice.max_length <= 512  # the tiny model's limit
    assert all(advice.reasons[field] for field in ("objective", "method", "lr", "epochs", "batch_size",
                                                   "max_length", "time"))


def test_closed_answer_set_gives_the_label_set_with_counts(tiny_model, tmp_path):
    advice = advise(write_jsonl(tmp_path / "chat.jsonl", routing_rows(150)), config_for(tiny_model))
    assert advice.labels == ["billing", "returns", "shipping"]
    assert sum(advice.label_counts.values()) == 150 and "3 short labels" in advice.reasons["objective"]


def test_rare_answers_are_not_a_label_set_and_the_reason_says_so(tiny_model, tmp_path):
    rows = routing_rows(60)
    rows[0]["messages"][-1]["content"] = "escalate"  # one answer seen once
    advice = advise(write_jsonl(tmp_path / "chat.jsonl", rows), config_for(tiny_model))
    assert advice.objective == "sft" and "'escalate'" in advice.reasons["objective"]


def test_user_settings_are_kept_and_only_unset_fields_are_advised(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", routing_rows(150))
    config = build_config({"model": {"name": str(tiny_model)}, "data": {"train": str(data)},
                           "train": {"lr": 3e-4, "max_steps": 5}})
    advice = advise(data, config)
    resolved = apply_advice(config, advice)
    assert resolved.objective == "classify" and resolved.method.name == "lora"
    assert resolved.train.lr == 3e-4 and resolved.train.max_steps == 5 and advice.reasons["lr"] == "you chose it"
    assert resolved.train.batch_size == advice.batch_size and resolved.data.max_length == advice.max_length
    assert resolved.recipe["source"] == "advised" and resolved.recipe["labels"] == ["billing", "returns", "shipping"]


def test_forced_objective_is_kept_and_the_advice_notes_what_the_data_suggests(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", routing_rows(150))
    config = build_config({"model": {"name": str(tiny_model)}, "objective": "sft"})
    advice = advise(data, config)
    assert (advice.objective, advice.source, advice.advised_objective) == ("sft", "forced", "classify")
    assert "the data alone suggests classify" in advice.reasons["objective"]


def hone(*args):
    return subprocess.run([sys.executable, "-m", "hone.cli", *args], capture_output=True, text=True)


def test_hone_plan_prints_the_recipe_with_reasons_and_json(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", routing_rows(150))
    done = hone("plan", "--data", str(data), "-m", str(tiny_model))
    assert done.returncode == 0, done.stderr
    assert "classify" in done.stdout and "billing (" in done.stdout and "why" in done.stdout
    done = hone("plan", "--data", str(data), "-m", str(tiny_model), "--json")
    advice = json.loads(done.stdout.strip().splitlines()[-1])
    assert advice["objective"] == "classify" and advice["labels"] == ["billing", "returns", "shipping"]
    missing = hone("plan", "--data", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


TRAIN_FLAGS = ["--max-steps", "8", "--lr", "1e-2", "--batch-size", "8", "--set", "threads=1", "--set",
               "precision=fp32"]


def test_chat_label_data_trains_a_classifier_by_default_that_answers_and_scores_like_a_chat_model(tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", routing_rows(150))
    test = write_jsonl(tmp_path / "test.jsonl", routing_rows(12, seed=1))
    run_dir = tmp_path / "run"
    done = hone("train", "-d", str(train), "-m", str(tiny_model), "-o", str(run_dir), *TRAIN_FLAGS)
    assert done.returncode == 0, done.stderr
    assert "objective: classify" in done.stderr and "Results (classify + " in done.stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["objective"] == "classify" and record["prompt_format"] == "chat"
    assert record["recipe"]["source"] == "advised" and record["recipe"]["objective"] == "classify"

    answered = hone("generate", str(run_dir), "-p", "Hi, I was charged twice. Thanks 5", "--json")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout.strip().splitlines()[-1])["answer"] in TEAMS

    chatted = subprocess.run([sys.executable, "-m", "hone.cli", "chat", str(run_dir)], input="the invoice is wrong\n\n",
                             capture_output=True, text=True)
    assert chatted.returncode == 0, chatted.stderr
    assert "classifier" in chatted.stderr and chatted.stdout.split("model> ")[1].split()[0] in TEAMS

    scored = hone("eval", str(run_dir), "--data", str(test), "--json")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout.strip().splitlines()[-1])
    exact = next(m for m in result["metrics"] if m["name"] == "exact_match")
    assert exact["base"] is not None and exact["tuned"] is not None
    assert all(answer in TEAMS for answer in result["tuned_answers"])
    assert result["recipe"]["objective"] == "classify" and result["recipe"]["source"] == "advised"
    tuned = result["classification"]["tuned"]
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(tuned) and "base" in result["classification"]
    assert sum(map(sum, tuned["confusion_matrix"]["rows"])) == 12
    assert tuned["accuracy"] == pytest.approx(exact["tuned"], abs=1e-3)
    assert "recipe" in (run_dir / "report.html").read_text()


def test_objective_override_to_sft_is_respected_and_recorded_in_the_run_and_registry(tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", routing_rows(60))
    run_dir = tmp_path / "run"
    done = hone("train", "-d", str(train), "-m", str(tiny_model), "-o", str(run_dir), "--objective", "sft",
                "--set", "eval.forgetting=false", *TRAIN_FLAGS)
    assert done.returncode == 0, done.stderr
    assert "the data suggests classify" in done.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["objective"] == "sft" and (run_dir / "adapter").is_dir()
    assert record["recipe"] == {**record["recipe"], "objective": "sft", "source": "forced",
                                "advised_objective": "classify"}
    shown = hone("runs", "show", run_dir.name, "--json")
    assert json.loads(shown.stdout)["metrics"]["recipe"]["source"] == "forced"


def test_predictor_answers_with_a_classifier_run_and_a_generative_run(tiny_model, tmp_path):
    from hone.objectives import run
    from hone.evaluation.predict import Predictor, answer

    base = {"model": {"name": str(tiny_model)}, "data": {"train": str(write_jsonl(tmp_path / "t.jsonl", routing_rows(60))),
                                                         "max_length": 64},
            "train": {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8, "threads": 1, "precision": "fp32"},
            "eval": {"forgetting": False}}
    classifier = run(build_config({**base, "output": str(tmp_path / "c")})).run_dir
    generator = run(build_config({**base, "objective": "sft", "output": str(tmp_path / "g")})).run_dir
    messages = [{"role": "system", "content": "Route the message to a team."},
                {"role": "user", "content": "Hi, the invoice is wrong. Thanks 3"}]
    predictor = Predictor(classifier)
    assert predictor.kind == "classifier" and predictor.answer(messages) in TEAMS
    assert answer(classifier, messages) == predictor.answer(messages)
    generated = Predictor(generator)
    assert generated.kind == "generator" and isinstance(generated.answer(messages, max_new_tokens=4), str)


def test_a_forced_method_the_advised_objective_cannot_honour_picks_the_best_objective_that_can(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "labels.jsonl", routing_rows(60))
    config = build_config({"model": {"name": str(tiny_model)}, "method": {"name": "prompt_tuning"}})
    advice = advise(data, config)
    assert advice.objective == "sft" and advice.method == "prompt_tuning"
    assert "prompt_tuning, does not apply to classify" in advice.reasons["objective"]
    # without a forced method the same data still trains a classifier
    assert advise(data, config_for(tiny_model)).objective == "classify"


def test_seed_is_a_flag_like_lr(tiny_model):
    from hone.cli import app
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["train", "--help"])
    assert "--seed" in shown.output
