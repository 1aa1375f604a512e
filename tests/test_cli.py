import json
import subprocess
import sys

import pytest

from hone.errors import ModelNotFound
from hone.models.catalogue import resolve_model


def hone(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hone.cli", *args], capture_output=True, text=True, env=env)


def test_bad_data_line_is_a_one_line_error_naming_file_and_line(tmp_path, cli):
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    '{"messages": [{"role": "asistant", "content": "x"}]}\n')
    result = cli("train", "--data", str(data), "--max-steps", "1", "--strict")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"error: {data}:2: messages[0].role is 'asistant'; "
                         "expected system, user, assistant or tool")
    assert "Traceback" not in result.stderr
    assert "recipe" not in result.stderr and "Converting" not in result.stderr  # refused before any model work


def test_unknown_flag_value_key_suggests(tmp_path, cli):
    result = cli("config", "show", "--set", "train.lrr=1")
    assert result.returncode == 2 and "did you mean 'train.lr'" in result.stderr


def test_catalogue_lists_embedded_models_as_json(cli):
    result = cli("models", "catalog", "--json")
    names = {row["name"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert names["smollm2-135m-instruct"]["default"] and names["smollm2-135m-instruct"]["installed"]
    assert names["minilm-l6"]["kind"] == "encoder"


def test_hub_id_offline_names_local_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="hub is unreachable.*smollm2-135m-instruct"):
        resolve_model("someorg/some-model")


def test_minilm_resolves_to_the_wheel_folder():
    resolved = resolve_model("minilm-l6")
    assert (resolved.path / "config.json").is_file() and resolved.kind == "encoder"


def test_a_damaged_gguf_is_one_error_naming_the_file(tmp_path):
    """The conversion runs in a child process; its failure comes back as one line, and no folder is left."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    with pytest.raises(ModelNotFound, match=r"model\.gguf: could not convert .*GGUF magic"):
        resolve_model(str(bad))
    from hone.home import models_dir

    assert not list(models_dir().glob("model-*"))  # no half-converted folder


def test_help_lists_every_command_under_its_lifecycle_stage():
    import click
    import typer
    from typer.testing import CliRunner

    from hone.cli import app
    from hone.cli.lifecycle import PANELS

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    names = group.list_commands(ctx)
    placed = {name for stage in PANELS.values() for name in stage}
    assert set(names) == placed, f"commands without a stage in PANELS: {sorted(set(names) - placed)}"
    assert names == [name for stage in PANELS.values() for name in stage]
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert shown.index("─ Data ") < shown.index("─ Fine-tune ") < shown.index("─ After deployment ")
    assert "answer lengths, empty/refusal/never-stops rates" in shown   # a docstring's line break is not kept
