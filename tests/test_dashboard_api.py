"""The /v1/hone calls the dashboard stands on, in-process (no browser, no worker), and what the worker's
heartbeat now writes for the Watch view: learning rate, speed, ETA, the overfitting alarm."""
from __future__ import annotations

import json

import pytest

from serve_helpers import chat_rows, in_process_app


@pytest.fixture
def app(tiny_model, tmp_path):
    served = in_process_app(tiny_model, tmp_path)
    with served.http:
        yield served


def test_the_data_check_names_every_bad_line_with_its_text_and_stores_nothing(app):
    rows = [json.dumps(r) for r in chat_rows(3)] + ['{"messages": [{"role": "robot", "content": "hi"}]}', "{not json"]
    answer = app.http.post("/v1/hone/data/check", headers=app.auth, data={"model": "tiny"},
                           files={"file": ("mine.jsonl", "\n".join(rows).encode())})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    problems = {p["line"]: p for group in report["files"][0]["validation"]["problems"].values() for p in group}
    assert set(problems) == {4, 5} and problems[4]["field"] == "messages[0].role"
    assert report["lines"]["4"].startswith('{"messages": [{"role": "robot"') and report["lines"]["5"] == "{not json"
    assert report["files"][0]["file"] == "mine.jsonl"      # the client's name, never the server's temporary path
    assert "[[" in report["files"][0]["example"]["text"]   # trained tokens marked, counted with the tiny model
    assert report["split"] == {"train": 3, "validation": 0, "validation_fraction": 0.1}
    assert app.http.get("/v1/files", headers=app.auth).json()["data"] == []
    unknown = app.http.post("/v1/hone/data/check", headers=app.auth, data={"model": "nope"},
                            files={"file": ("a.jsonl", rows[0].encode())})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"


def _finished_job(settings, org: str) -> str:
    from hone.serve import db

    with db.session(settings.db) as s:
        s.add(db.Job(id="ftjob-done", org=org, model="tiny", training_file="file-x", seed=0,
                     method={"type": "supervised", "supervised": {"hyperparameters": {}}}, status="succeeded", created_at=0, result_files=[],
                     attempts=0, model_deleted=0))
        for text in ("Created fine-tuning job: ftjob-done", "Step 1: training loss=2.0000",
                     "The job has successfully completed"):
            db.add_event(s, "ftjob-done", text)
        s.commit()
    return "ftjob-done"


def frames(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_the_event_stream_sends_the_job_then_its_events_in_order_and_ends_with_the_job(app):
    from hone.serve.auth import create_key

    job_id = _finished_job(app.settings, "acme")
    answer = app.http.get(f"/v1/hone/fine_tuning/jobs/{job_id}/stream", headers=app.auth)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    sent = frames(answer.text)
    assert sent[0][0] == "job" and sent[0][1]["status"] == "succeeded"
    assert [data["message"] for kind, data in sent[1:]] == [
        "Created fine-tuning job: ftjob-done", "Step 1: training loss=2.0000", "The job has successfully completed"]
    after = sent[1][1]["id"]   # a dropped stream resumes after the last event it got
    again = frames(app.http.get(f"/v1/hone/fine_tuning/jobs/{job_id}/stream?after={after}", headers=app.auth).text)
    assert [data["message"] for kind, data in again if kind == "event"][0] == "Step 1: training loss=2.0000"
    other = {"Authorization": f"Bearer {create_key('globex', app.settings.db)}"}
    assert app.http.get(f"/v1/hone/fine_tuning/jobs/{job_id}/stream", headers=other).status_code == 404
    assert app.http.get("/v1/hone/runs", headers=other).json()["data"] == []


def test_the_heartbeat_reports_rate_speed_eta_and_the_overfitting_alarm(tmp_path, monkeypatch):
    from sqlalchemy import select

    from hone.serve import db
    from hone.serve.heartbeat import Heartbeat
    from hone.serve.settings import ServeSettings

    monkeypatch.setenv("HONE_HOME", str(tmp_path / "home"))
    settings = ServeSettings(db=f"sqlite:///{tmp_path / 'serve.db'}")
    with db.session(settings.db) as s:
        s.add(db.Job(id="ftjob-hb", org="acme", model="tiny", training_file="file-x", seed=0, worker="t",
                     method={"type": "supervised"}, status="running", created_at=0, result_files=[],
                     attempts=0, model_deleted=0))
        s.commit()
        job = s.scalar(select(db.Job).where(db.Job.id == "ftjob-hb"))
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 1, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 50.0, "epoch": 0.1, "elapsed_s": 2.0},
             {"step": 2, "loss": 1.5, "val_loss": 1.9, "lr": 9e-4, "tokens_per_s": 60.0, "epoch": 0.2,
              "elapsed_s": 4.0, "overfitting": True}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    beat = Heartbeat(settings, job, "t")
    beat.run_dir, beat.total_steps = run, 10
    beat.sync_progress()
    with db.session(settings.db) as s:
        events = list(s.scalars(select(db.Event).where(db.Event.job_id == "ftjob-hb").order_by(db.Event.seq)))
        finish = s.scalar(select(db.Job.estimated_finish).where(db.Job.id == "ftjob-hb"))
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics[1]["learning_rate"] == 9e-4 and metrics[1]["tokens_per_s"] == 60.0 and metrics[1]["total_steps"] == 10
    alarm = [e for e in events if e.level == "warn"]
    assert len(alarm) == 1 and alarm[0].message.startswith("Overfitting alarm at step 2")
    # 8 steps left at 2 s a step
    assert finish is not None and 14 <= finish - db.now() <= 17
