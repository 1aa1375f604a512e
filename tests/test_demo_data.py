"""The bundled `orders` demo dataset: reproducible, well-formed, and split as documented."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHIPPED = ROOT / "src/hone/datasets/orders"
SCRIPT = ROOT / "scripts/make_demo_data.py"
SPLITS = {"train": 800, "validation": 80, "test": 120}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(split: str) -> list[dict]:
    with open(SHIPPED / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_generator_is_deterministic_and_matches_shipped_files(generator, tmp_path):
    assert generator.main(["--out", str(tmp_path)]) == 0
    for split in SPLITS:
        generated = (tmp_path / f"{split}.jsonl").read_bytes()
        assert generated == (SHIPPED / f"{split}.jsonl").read_bytes(), split
        assert b"\r" not in generated


def test_every_answer_is_valid_json_with_the_four_fields():
    for split in SPLITS:
        for record in load(split):
            assert list(record) == ["messages"]
            system, user, assistant = record["messages"]
            assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
            answer = json.loads(assistant["content"])
            assert list(answer) == ["name", "date", "item", "quantity"]
            assert assistant["content"] == json.dumps(answer, ensure_ascii=False)
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer["date"])
            day = dt.date.fromisoformat(answer["date"])
            assert 2025 <= day.year <= 2027
            assert type(answer["quantity"]) is int and 1 <= answer["quantity"] <= 48
            message = user["content"]
            assert answer["name"] in message and answer["item"] in message
            assert len(answer["name"].split()) >= 2
            assert not re.search(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b", message)
            for weekday in WEEKDAYS:  # a weekday, full or short, must be the right one
                if re.search(rf"\b{weekday[:3]}(?:{weekday[3:]})?\b", message):
                    assert day.weekday() == WEEKDAYS.index(weekday), message


def test_splits_have_expected_sizes_and_no_shared_messages():
    messages = []
    for split, size in SPLITS.items():
        records = load(split)
        assert len(records) == size
        messages += [r["messages"][1]["content"] for r in records]
    assert len(messages) == len(set(messages))


def test_unseen_templates_appear_only_at_the_end_of_test(generator):
    assert len(generator.SEEN_TEMPLATES) >= 40 and len(generator.UNSEEN_TEMPLATES) == 10
    unseen = set(range(len(generator.SEEN_TEMPLATES), len(generator.TEMPLATES)))
    splits = generator.generate(generator.DEFAULT_SEED)
    for split in ("train", "validation"):
        assert not unseen & {tid for tid, _ in splits[split]}
    test_ids = [tid for tid, _ in splits["test"]]
    assert not unseen & set(test_ids[:80]) and set(test_ids[80:]) == unseen
