"""Every config in examples/ loads, names data that ships with hone, and trains for a couple of steps
on the tiny model (data cut to a few lines, so each test takes seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hone.config import load_config
from hone.objectives.registry import OBJECTIVES
from hone.objectives import run

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_is_an_example_for_every_objective():
    assert sorted(p.stem for p in EXAMPLES) == sorted(OBJECTIVES)


def shorten(path: Path, tmp_path: Path, lines: int = 24) -> str:
    """The first lines of a bundled file, as a new file under tmp_path."""
    source = ROOT / path
    assert source.is_file(), f"{path} does not ship with hone"
    target = tmp_path / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]), encoding="utf-8")
    return str(target)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_a_couple_of_steps_on_the_tiny_model(example, tiny_model, tmp_path):
    cfg = load_config(example)
    assert cfg.objective == example.stem
    overrides = {"model.name": str(tiny_model), "output": str(tmp_path / "run"), "train.max_steps": 2,
                 "train.time_budget": None, "train.batch_size": 4, "train.micro_batch_size": 4, "train.threads": 1,
                 "eval.max_new_tokens": 4, "grpo.max_completion_length": 4}
    for field in ("train", "validation", "test"):
        if getattr(cfg.data, field):
            overrides[f"data.{field}"] = shorten(getattr(cfg.data, field), tmp_path)
    if cfg.objective == "distill":
        overrides["distill.teacher"] = str(tiny_model)  # the example's teacher is a real model
    cfg = load_config(example, overrides)
    if cfg.mixture:
        cfg.mixture = [s.model_copy(update={"train": Path(shorten(s.train, tmp_path)),
                                            "validation": Path(shorten(s.validation, tmp_path, 6)) if s.validation else None})
                       for s in cfg.mixture]
    result = run(cfg)
    assert result.run_dir == tmp_path / "run"
    assert (result.run_dir / "run.json").is_file()
    record = result.record
    assert record["status"] == "succeeded" and record["results"]["steps"] == 2
