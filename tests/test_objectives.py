"""Objectives on hone's loop or transformers' Trainer: a few steps on the tiny model, the loss falls,
the run folder is complete, and the saved artifact reloads to give the same outputs."""
from __future__ import annotations

import json

import pytest
import torch
from objective_helpers import (SavedModelSpy, chat_rows, falls, label_rows, logits, losses, tag_rows, text_rows,
                               tiny_run_config, write_jsonl)

from hone.data.render import IGNORE, tokenize_chat
from hone.objectives import classify, mixture, ner, pretrain, run
from hone.methods.heads import load_head_run
from hone.objectives.pretrain import pack_blocks
from hone.methods.artifact import load_run_model


def run_record(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def assert_run_folder(run_dir, objective):
    record = run_record(run_dir)
    assert record["status"] == "succeeded" and record["objective"] == objective
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert record["results"]["tuned_score"] is not None
    return record


def test_sft_turn_with_weight_zero_is_not_trained(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "skip this", "weight": 0},
                {"role": "user", "content": "Again"}, {"role": "assistant", "content": "learn this"}]
    example = tokenize_chat(tokenizer, messages, 256)
    trained = tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE])
    assert "learn this" in trained and "skip" not in trained
    messages[1]["weight"] = 1
    both = tokenize_chat(tokenizer, messages, 256)
    assert "skip this" in tokenizer.decode([t for t, l in zip(both.input_ids, both.labels) if l != IGNORE])


def test_pack_blocks_joins_documents_with_eos_and_trains_every_token(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["one two three", "four five"] * 10
    blocks = pack_blocks(tokenizer, texts, 16)
    assert all(len(b.input_ids) == 16 for b in blocks[:-1]) and len(blocks[-1].input_ids) <= 16
    expected = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    stream = [t for b in blocks for t in b.input_ids]
    assert stream == expected[:len(stream)] and len(expected) - len(stream) < 8  # only a stray tail is dropped
    assert all(b.labels == b.input_ids for b in blocks)


def test_pretrain_lowers_loss_and_perplexity_and_adapter_reloads(tiny_model, tmp_path, monkeypatch):
    spy = SavedModelSpy(monkeypatch, pretrain)
    train = write_jsonl(tmp_path / "text.jsonl", text_rows(30))
    test = write_jsonl(tmp_path / "test.jsonl", text_rows(4, seed=1))
    cfg = tiny_run_config(tiny_model, tmp_path, "pretrain", train, data={"test": str(test)},
                          pretrain={"block_size": 32}, train={"max_steps": 8})
    result = run(cfg)
    record = assert_run_folder(result.run_dir, "pretrain")
    assert falls(losses(result.run_dir))
    assert record["results"]["tuned_score"] < record["results"]["base_score"]  # perplexity
    reloaded, _ = load_run_model(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_mixture_draws_sources_by_weight_and_scores_each(tiny_model, tmp_path, monkeypatch):
    spy = SavedModelSpy(monkeypatch, mixture)
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows(40))
    text = write_jsonl(tmp_path / "text.jsonl", text_rows(20))
    cfg = tiny_run_config(tiny_model, tmp_path, "mixture", chat, pretrain={"block_size": 32},
                          mixture=[{"train": str(chat), "weight": 3}, {"train": str(text), "weight": 1}])
    result = run(cfg)
    record = assert_run_folder(result.run_dir, "mixture")
    sources = record["results"]["sources"]
    assert set(sources) == {"chat", "text"}
    assert all(s["tuned_val_loss"] < s["base_val_loss"] for s in sources.values())
    assert falls(losses(result.run_dir))
    reloaded, _ = load_run_model(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_mixture_shares_follow_the_weights():
    from hone.data.render import TokenizedExample

    a = [TokenizedExample([1, i], [1, i]) for i in range(30)]
    b = [TokenizedExample([2, i], [2, i]) for i in range(10)]
    mixed = mixture.draw_mixture([a, b], [1.0, 3.0], seed=0)
    from_b = sum(e.input_ids[0] == 2 for e in mixed)
    assert len(mixed) == 40 and from_b == 30  # b is cycled to reach three quarters


@pytest.mark.parametrize("method", ["lora", "full"])
def test_classify_learns_labels_and_saved_classifier_reloads(tiny_model, tmp_path, monkeypatch, method):
    spy = SavedModelSpy(monkeypatch, classify)
    train = write_jsonl(tmp_path / "labels.jsonl", label_rows(48))
    test = write_jsonl(tmp_path / "test.jsonl", label_rows(12, seed=1))
    cfg = tiny_run_config(tiny_model, tmp_path, "classify", train, data={"test": str(test)},
                          method={"name": method}, train={"lr": 1e-2 if method == "lora" else 2e-3, "max_steps": 10})
    result = run(cfg)
    record = assert_run_folder(result.run_dir, "classify")
    assert record["labels"] == ["bad", "good"] and record["head"] == "sequence"
    assert falls(losses(result.run_dir))
    assert {"tuned_accuracy", "tuned_macro_f1", "tuned_confusion_matrix"} <= set(record["results"])
    assert (result.run_dir / ("adapter" if method == "lora" else "model")).is_dir()
    reloaded, _, labels = load_head_run(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_ner_aligns_word_tags_to_tokens_and_saved_tagger_reloads(tiny_model, tmp_path, monkeypatch):
    spy = SavedModelSpy(monkeypatch, ner)
    train = write_jsonl(tmp_path / "tags.jsonl", tag_rows(48))
    cfg = tiny_run_config(tiny_model, tmp_path, "ner", train, train={"max_steps": 10})
    result = run(cfg)
    record = assert_run_folder(result.run_dir, "ner")
    assert record["labels"] == ["B-ITEM", "B-PER", "B-QTY", "O"]
    assert falls(losses(result.run_dir))
    assert record["results"]["tuned_word_accuracy"] > 0.5
    reloaded, _, _ = load_head_run(result.run_dir)
    torch.testing.assert_close(logits(reloaded), logits(spy.model), atol=1e-4, rtol=1e-4)


def test_ner_alignment_gives_each_word_one_first_token(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    words = ["Søren", "Al-Farsi", "ordered", "12", "extension", "cords"]
    encoded, starts = ner.first_tokens(tokenizer, words, 64)
    assert sorted(w for w in starts if w is not None) == list(range(len(words)))
    for position, word in enumerate(starts):
        if word is not None:
            assert words[word].startswith(tokenizer.decode([encoded["input_ids"][position]]).strip())


def test_hone_train_objective_flag_prints_results_table_and_json(tiny_model, tmp_path):
    import subprocess
    import sys

    labels = write_jsonl(tmp_path / "labels.jsonl", label_rows(24))
    command = [sys.executable, "-m", "hone.cli", "train", "--objective", "classify", "-d", str(labels),
               "-m", str(tiny_model), "--max-steps", "2", "--batch-size", "8", "--set", "threads=1"]
    done = subprocess.run(command + ["-o", str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Results (classify + " in done.stdout and "macro-F1" in done.stdout
    done = subprocess.run(command + ["-o", str(tmp_path / "b"), "--json"], capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["objective"] == "classify" and summary["steps"] == 2 and summary["run_dir"] == str(tmp_path / "b")
