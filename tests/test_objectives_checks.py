"""Invalid objective x method x data combinations fail in one line, before a run folder exists."""
from __future__ import annotations

import pytest
from objective_helpers import chat_rows, label_rows, preference_rows, text_rows, tiny_run_config, write_jsonl

from hone.errors import ConfigError
from hone.evaluation.classification import classification_scores, entity_f1, entity_spans
from hone.objectives import checks, run


def fails_before_work(cfg, match):
    with pytest.raises(ConfigError, match=match) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not (cfg.output / "run.json").exists()


def test_classification_data_given_to_dpo_names_the_objective_that_fits(tiny_model, tmp_path):
    labels = write_jsonl(tmp_path / "labels.jsonl", label_rows(8))
    fails_before_work(tiny_run_config(tiny_model, tmp_path, "dpo", labels),
                      r"labels.jsonl: objective 'dpo' needs preference pairs .* it fits objective classify")


def test_preference_pairs_given_to_pretrain_fail(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    fails_before_work(tiny_run_config(tiny_model, tmp_path, "pretrain", pairs), r"needs raw text")


def test_probe_does_not_apply_to_dpo(tiny_model, tmp_path, monkeypatch):
    # `probe` arrives with the methods work; the objective side already refuses the pair.
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    cfg = tiny_run_config(tiny_model, tmp_path, "dpo", pairs)
    object.__setattr__(cfg.method, "name", "probe")  # bypass the Literal of this branch's methods
    fails_before_work(cfg, r"method 'probe' does not apply to objective 'dpo'")


def test_grpo_needs_exactly_one_reward(tiny_model, tmp_path):
    text = write_jsonl(tmp_path / "text.jsonl", text_rows(4))
    fails_before_work(tiny_run_config(tiny_model, tmp_path, "grpo", text), r"exactly one of grpo.reward_function")
    cfg = tiny_run_config(tiny_model, tmp_path, "grpo", text, grpo={"reward_function": "no_such_module:f"})
    fails_before_work(cfg, r"cannot import 'no_such_module'")
    cfg = tiny_run_config(tiny_model, tmp_path, "grpo", text, grpo={"reward_function": "hone.objectives.rewards"})
    fails_before_work(cfg, r"must look like package.module:function")


def test_grpo_batch_must_hold_whole_groups(tiny_model, tmp_path):
    text = write_jsonl(tmp_path / "text.jsonl", text_rows(4))
    cfg = tiny_run_config(tiny_model, tmp_path, "grpo", text, train={"batch_size": 6},
                          grpo={"reward_function": "hone.objectives.rewards:json_fields", "num_generations": 4})
    fails_before_work(cfg, r"multiple of grpo.num_generations")


def test_mixture_needs_two_sources(tiny_model, tmp_path):
    text = write_jsonl(tmp_path / "text.jsonl", text_rows(4))
    fails_before_work(tiny_run_config(tiny_model, tmp_path, "mixture", text, mixture=[{"train": str(text)}]),
                      r"at least two datasets")


def test_classify_label_unseen_in_training_is_a_data_error(tiny_model, tmp_path):
    from hone.errors import DataError

    train = write_jsonl(tmp_path / "train.jsonl", label_rows(8))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "hm", "label": "neutral"}])
    cfg = tiny_run_config(tiny_model, tmp_path, "classify", train, data={"test": str(test)})
    with pytest.raises(DataError, match=r"test.jsonl:1: label 'neutral' in the test data never occurs"):
        run(cfg)


def test_cli_prints_one_line_and_exits_2(tiny_model, tmp_path):
    import subprocess
    import sys

    labels = write_jsonl(tmp_path / "labels.jsonl", label_rows(4))
    done = subprocess.run([sys.executable, "-m", "hone.cli", "train", "--objective", "reward", "-d", str(labels),
                           "-m", str(tiny_model), "-o", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "objective 'reward' needs preference pairs" in done.stderr


def test_reward_function_is_resolved_from_its_dotted_path():
    from hone.objectives.rewards import json_fields

    assert checks.reward_function("hone.objectives.rewards:json_fields") is json_fields
    scores = json_fields(['{"a": 1, "b": 2}', '{"a": 1, "b": 3}', "not json"], answer=['{"a": 1, "b": 2}'] * 3)
    assert scores == [1.0, 0.5, 0.0]


def test_classifier_scores_record_accuracy_macro_f1_and_confusion_rows_by_true_label():
    scores = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-4)  # "c" never occurs: not averaged
    assert scores["confusion_matrix"]["rows"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    majority = classification_scores(["a"] * 4, ["a", "a", "a", "b"], ["a", "b"])
    assert majority["macro_f1"] == pytest.approx((6 / 7 + 0) / 2, abs=1e-4)  # majority guessing is punished


def test_entity_f1_needs_exact_span_and_type():
    gold = [["B-PER", "I-PER", "O", "B-ITEM"]]
    assert entity_spans(gold[0]) == {("PER", 0, 2), ("ITEM", 3, 4)}
    assert entity_f1(gold, gold) == 1.0
    assert entity_f1([["B-PER", "O", "O", "B-ITEM"]], gold) == 0.5  # a cut-short name does not count
    assert entity_f1([["O"] * 4], gold) == 0.0


def test_a_chat_template_that_cannot_render_the_data_fails_before_a_run_folder(tiny_model, tmp_path):
    """SFT renders every chat before it opens the run folder: no folder is left marked `running`."""
    import shutil

    from transformers import AutoTokenizer

    from hone.errors import UserError

    model = tmp_path / "odd-template"
    shutil.copytree(tiny_model, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if not add_generation_prompt %}(end of chat){% endif %}")
    tokenizer.save_pretrained(model)
    two_turns = [{"messages": r["messages"] * 2} for r in chat_rows(8)]
    chats = write_jsonl(tmp_path / "chats.jsonl", two_turns)
    cfg = tiny_run_config(model, tmp_path, "sft", chats)
    with pytest.raises(UserError, match=r"renders messages\[1\] differently") as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not cfg.output.exists()
