"""The bundled datasets of the examples: reproducible from their generator, and of the shape each objective needs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hone.data.load import load_records
from hone.data.records import LabelExample, PreferenceExample, TagExample, TextExample

ROOT = Path(__file__).parents[1]
SHIPPED = ROOT / "src/hone/datasets"
SHAPES = {"support-topics": LabelExample, "order-entities": TagExample, "order-preferences": PreferenceExample,
          "shop-text": TextExample}


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_objective_data", ROOT / "scripts/make_objective_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_shipped_files_byte_for_byte(generator, tmp_path):
    generator.main(["--out", str(tmp_path)])
    for name in SHAPES:
        for path in (SHIPPED / name).glob("*.jsonl"):
            assert (tmp_path / name / path.name).read_bytes() == path.read_bytes(), path


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_dataset_loads_as_the_records_its_objective_needs(name):
    files = sorted((SHIPPED / name).glob("*.jsonl"))
    assert len(files) == 2
    for path in files:
        records = load_records(path)
        assert all(isinstance(r, SHAPES[name]) for r in records)
        assert 40 <= len(records) <= 400


def test_rejected_answers_differ_from_chosen_and_labels_are_balanced():
    pairs = load_records(SHIPPED / "order-preferences/train.jsonl")
    assert all(p.chosen != p.rejected for p in pairs)
    labels = [r.label for r in load_records(SHIPPED / "support-topics/train.jsonl")]
    assert {labels.count(l) for l in set(labels)} == {80}
