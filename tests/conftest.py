"""Fixtures: a tiny Llama (2 layers, hidden 64) with SmolLM2's real tokenizer and chat template."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def shared_models(tmp_path_factory):
    """The embedded model converted once for the whole run (all xdist workers: the basetemp's parent), not
    once per test's hone home: that conversion costs 25 s and 1.6 GB each time."""
    folder = tmp_path_factory.getbasetemp().parent / "hone-models"
    folder.mkdir(exist_ok=True)
    os.environ["HONE_MODELS"] = str(folder)
    return folder


@pytest.fixture(autouse=True)
def hone_home(tmp_path, monkeypatch):
    """Each test gets its own hone home, so runs never mix with the user's (converted models are shared)."""
    monkeypatch.setenv("HONE_HOME", str(tmp_path / "hone-home"))
    return tmp_path / "hone-home"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """`hone ARGS` through the command's own entry point (hone.cli.main: one-line errors, exit statuses), in
    this process: no interpreter start and torch import per call. For commands that end before training."""
    from hone.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["hone", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)
    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama saved as an HF folder, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hone.models.catalogue import CATALOGUE, catalogue_file

    gguf = catalogue_file(CATALOGUE["smollm2-135m-instruct"])
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_chat(path: Path, n: int, seed: int = 0) -> Path:
    """`n` short chat examples: the answer is the user's word reversed, as JSON."""
    import random

    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean", "amber", "lemon"]
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(n):
            word = rng.choice(words)
            record = {"messages": [{"role": "user", "content": f"Reverse {word}"},
                                   {"role": "assistant", "content": json.dumps({"reversed": word[::-1]})}]}
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def chat_files(tmp_path) -> dict[str, Path]:
    return {"train": write_chat(tmp_path / "train.jsonl", 24, 1),
            "validation": write_chat(tmp_path / "val.jsonl", 6, 2),
            "test": write_chat(tmp_path / "test.jsonl", 4, 3)}
