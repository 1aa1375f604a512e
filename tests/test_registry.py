import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hone.config import build_config
from hone.errors import UserError
from hone.registry.fingerprint import file_sha256, folder_sha256
from hone.registry.runs import find_run, new_run_dir, update_record


def _postgres_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_url():
    """HONE_TEST_POSTGRES_URL, or a throwaway local server when PostgreSQL is installed; else skip."""
    if os.environ.get("HONE_TEST_POSTGRES_URL"):
        yield os.environ["HONE_TEST_POSTGRES_URL"]
        return
    pytest.importorskip("psycopg")
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server available (set HONE_TEST_POSTGRES_URL or install postgresql)")
    as_user = []
    folder = Path(tempfile.mkdtemp(prefix="hone-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser") or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root and no postgres user to start a server as")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "hone"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-k {folder} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://hone@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, monkeypatch, hone_home):
    if request.param == "sqlite":
        monkeypatch.delenv("HONE_DB", raising=False)
        yield f"sqlite:///{hone_home / 'registry.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("HONE_DB", url)
    yield url
    from sqlalchemy import create_engine

    from hone.registry.store import Base

    engine = create_engine(url)
    Base.metadata.drop_all(engine)  # every test starts from an empty registry
    engine.dispose()


def fake_run(tiny_model, data_file, tmp_path, name, lr, folder):
    """A run folder written through registry/runs.py's hooks, as an objective would write it."""
    cfg = build_config({"name": name, "model": {"name": str(tiny_model)}, "output": str(tmp_path / folder),
                        "data": {"train": str(data_file)}, "train": {"lr": lr}})
    path = new_run_dir(cfg)
    update_record(path, status="running", base_model=str(tiny_model), base_path=str(tiny_model), method="lora",
                  objective="sft", hone_version="0.1.0")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    update_record(path, status="succeeded", results={"steps": 4, "val_loss": lr * 100, "tuned_score": 0.5},
                  forgetting={"base": 50.0, "tuned": 49.0, "drop": 1.0, "ci": [-1, 3], "gate": 5, "passed": True})
    return path


def test_registry_round_trip(database, tiny_model, chat_files, tmp_path):
    from hone.registry import database_url, diff_runs, get_run, list_runs, remove_run, set_tag

    assert database_url() == database
    first = fake_run(tiny_model, chat_files["train"], tmp_path, "support-bot", 1e-4, "one")
    second = fake_run(tiny_model, chat_files["train"], tmp_path, "support-bot", 2e-4, "two")

    row = get_run("support-bot:1")
    assert Path(row.path) == first.resolve() and row.version == 1 and row.status == "succeeded"
    assert row.config["train"]["lr"] == 1e-4 and row.method == "lora" and row.objective == "sft"
    assert row.data["train"]["sha256"] == file_sha256(chat_files["train"])
    assert row.base_model == str(tiny_model) and row.base_model_hash == folder_sha256(tiny_model)
    assert row.metrics["steps"] == 4 and row.metrics["forgetting"]["passed"] is True
    assert row.artifacts["adapter"]["bytes"] == len(b"weights")
    assert row.libraries["torch"].startswith("2.13.0") and row.hone_version == "0.1.0"
    assert row.created_at <= row.updated_at and row.finished_at is not None

    assert get_run("support-bot").version == 2          # the newest succeeded version
    assert find_run("support-bot:2") == second.resolve()
    set_tag("support-bot:1", "production")
    assert find_run("support-bot@production") == first.resolve()
    _, previous = set_tag("support-bot:2", "production")  # moving a tag
    assert previous == row.id and find_run("support-bot@production") == second.resolve()
    assert [r["tags"] for r in list_runs(name="support-bot")] == [["production"], []]

    diff = diff_runs("support-bot:1", "support-bot:2")
    assert ("train.lr", 1e-4, 2e-4) in diff["config"] and ("val_loss", 0.01, 0.02) in diff["metrics"]
    assert diff["data"] == []

    remove_run("support-bot:2")
    assert not second.exists() and first.exists()
    with pytest.raises(UserError, match="no run 'support-bot@production'"):
        find_run("support-bot@production")                # its tag went with it
    assert [r["ref"] for r in list_runs()] == ["support-bot:1"]


def test_unreachable_database_is_a_one_line_error_and_does_not_stop_a_run(monkeypatch, tiny_model, chat_files,
                                                                          tmp_path, capsys):
    from hone.registry import list_runs

    monkeypatch.setenv("HONE_DB", "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(UserError, match="cannot open the run registry at postgresql"):
        list_runs()
    path = fake_run(tiny_model, chat_files["train"], tmp_path, "offline", 1e-4, "offline")
    assert json.loads((path / "run.json").read_text())["status"] == "succeeded"
    assert "run not recorded in the registry" in capsys.readouterr().err


def test_runs_commands_list_show_tag_diff_and_rm_asks_first(tiny_model, chat_files, tmp_path):
    from hone.cli import app

    first = fake_run(tiny_model, chat_files["train"], tmp_path, "bot", 1e-4, "a")
    fake_run(tiny_model, chat_files["train"], tmp_path, "bot", 3e-4, "b")
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["runs", "list", "--json"]).stdout)
    assert [r["ref"] for r in listed] == ["bot:2", "bot:1"]
    assert "bot:1" in runner.invoke(app, ["runs", "show", "bot:1"]).stdout
    assert runner.invoke(app, ["runs", "tag", "bot:1", "production"]).stdout.startswith("bot@production -> bot:1")
    assert "train.lr" in runner.invoke(app, ["runs", "diff", "bot:1", "bot:2"]).stdout

    refused = runner.invoke(app, ["runs", "rm", "bot@production"], input="n\n")
    assert refused.exit_code == 1 and first.exists() and "Delete run bot:1" in refused.stdout
    removed = runner.invoke(app, ["runs", "rm", "bot@production"], input="y\n")
    assert removed.exit_code == 0 and not first.exists()
    assert runner.invoke(app, ["runs", "rm", "bot:2", "--yes"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["runs", "list", "--json"]).stdout) == []


def test_run_folders_from_before_the_registry_are_imported(hone_home, tmp_path):
    from hone.home import runs_dir
    from hone.registry import import_run_folders, list_runs

    old = runs_dir() / "20260101-000000-legacy"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("name: legacy\nmethod: {name: full}\n")
    (old / "run.json").write_text(json.dumps({"status": "succeeded", "results": {"steps": 3}}))
    assert import_run_folders() == 1 and import_run_folders() == 0
    (row,) = list_runs()
    assert row["ref"] == "legacy:1" and row["metrics"]["steps"] == 3 and row["method"] == "full"


def test_sft_run_is_registered_and_found_by_name(tiny_model, chat_files, tmp_path):
    from hone.objectives import run
    from hone.registry import get_run

    cfg = build_config({"name": "reverser", "model": {"name": str(tiny_model)}, "output": str(tmp_path / "run"),
                        "data": {"train": str(chat_files["train"]), "validation": str(chat_files["validation"]),
                                 "max_length": 64},
                        "train": {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8, "threads": 1}})
    result = run(cfg)  # objective auto: the advice picks sft for this data
    row = get_run("reverser:1")
    assert Path(row.path) == result.run_dir.resolve() and row.status == "succeeded"
    assert row.metrics["steps"] == 2 and "adapter" in row.artifacts and row.objective == "sft"
    assert find_run("reverser") == result.run_dir.resolve()
