"""Job workers: atomic claims, leases, SIGKILL mid-job, cancel and pause of a running job."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pytest

from serve_helpers import chat_rows, jsonl, start_server, wait_finished, wait_for
from test_registry import postgres_url  # noqa: F401 - the throwaway PostgreSQL server fixture

# Jobs train for a wall-clock budget, not a step count: on an idle machine 24 steps of the tiny model
# took 0.8 s and ended before a cancel or pause could reach them. STEPS is only an upper bound. Early stopping is
# off: it ended the 24-row job at step 54 after 1.8 s on an idle machine, and in CI a pause or SIGTERM sent after the
# first checkpoint arrived after that end.
STEPS = 100_000
TRAIN_SECONDS = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'serve.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    from hone.serve import db

    with db.session(url) as s:  # leave the shared server empty for the next test
        db.Base.metadata.drop_all(s.get_bind())


def test_concurrent_claims_take_each_job_exactly_once(database):
    from hone.serve import db
    from hone.serve.settings import ServeSettings
    from hone.serve.worker import Worker

    settings = ServeSettings(db=database, lease_seconds=60)
    with db.session(settings.db) as s:
        for i in range(12):
            s.add(db.Job(id=f"ftjob-{i:02d}", org="acme", model="tiny", training_file="file-x", seed=0,
                         method={"type": "supervised"}, status="queued", created_at=0, result_files=[],
                         attempts=0, model_deleted=0))
        s.commit()
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(n: int) -> None:
        worker = Worker(settings, name=f"w{n}")
        while (got := worker.claim()) is not None:
            with lock:
                claimed.append(got[0])

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"ftjob-{i:02d}" for i in range(12)]  # all taken, none twice

    # A live lease keeps a running job; an expired one (its worker died) frees it for another worker.
    with db.session(settings.db) as s:
        job = s.query(db.Job).filter_by(id="ftjob-00").one()
        job.status, job.lease_until = "running", time.time() + 60
        s.commit()
    assert Worker(settings, name="late").claim() is None
    with db.session(settings.db) as s:
        s.query(db.Job).filter_by(id="ftjob-00").update({"lease_until": time.time() - 1})
        s.commit()
    got = Worker(settings, name="late").claim()
    assert got and got[0] == "ftjob-00" and got[1].startswith("late:")


def test_a_pause_that_lands_after_the_last_step_is_reported(tmp_path, monkeypatch):
    """Training can end between the pause and the heartbeat that would have seen it: the worker must
    still say the job stopped, or the user waits on a paused job that never reports (a CI flake)."""
    from sqlalchemy import select

    from hone.serve import db
    from hone.serve.settings import ServeSettings
    from hone.serve.worker import Worker

    monkeypatch.setenv("HONE_HOME", str(tmp_path / "home"))
    settings = ServeSettings(db=f"sqlite:///{tmp_path / 'serve.db'}", lease_seconds=60)
    with db.session(settings.db) as s:
        s.add(db.Job(id="ftjob-late", org="acme", model="tiny", training_file="file-x", seed=0,
                     method={"type": "supervised"}, status="running", created_at=0, result_files=[],
                     attempts=0, model_deleted=0))
        s.commit()
    worker = Worker(settings, name="w")
    job_id, token = worker.claim()
    with db.session(settings.db) as s:  # what POST /jobs/{id}/pause does
        s.query(db.Job).filter_by(id=job_id).update({"status": "paused", "request": "pause"})
        s.commit()
        job = s.scalar(select(db.Job).where(db.Job.id == job_id))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    worker.succeed(job, token, run_dir)  # training had just ended when the pause arrived
    with db.session(settings.db) as s:
        row = s.scalar(select(db.Job).where(db.Job.id == job_id))
        messages = list(s.scalars(select(db.Event.message).where(db.Event.job_id == job_id)))
    assert row.status == "paused" and row.worker is None and row.fine_tuned_model is None
    assert messages == ["Training stopped (pause) after its last step; its checkpoint is kept"]


# Leases: short, so a killed worker's job frees soon and a pause or cancel is seen within a heartbeat (a third of
# the lease); a job that moves between workers gets a longer one: at 2 s a heartbeat delayed on a loaded machine
# (load average 10) lost a live lease and the SIGKILL test's job was resumed twice.
LEASE_SECONDS, HANDOVER_LEASE_SECONDS = 2, 6


@pytest.fixture(scope="module")
def shared_server(tiny_model, tmp_path_factory):
    """No workers of its own: each test starts (and kills) `hone worker` processes."""
    srv = start_server(tmp_path_factory.mktemp("serve-workers"), "--base-model", f"tiny={tiny_model}", workers=0)
    args = ["--base-model", f"tiny={tiny_model}", "--max-steps", str(STEPS), "--time-budget", str(TRAIN_SECONDS),
            "--no-early-stopping",
            "--save-every", "4", "--lease-seconds", str(LEASE_SECONDS)]
    srv.worker_args = args
    srv.handover_args = args[:-1] + [str(HANDOVER_LEASE_SECONDS)]
    yield srv
    srv.stop()


@pytest.fixture
def server(shared_server):
    """The module's server; the workers a test starts are stopped when it ends. Their logs' tails are
    printed then, which pytest shows only for a failed test: what the worker did is what explains it."""
    first = len(shared_server.workers)
    yield shared_server
    shared_server.stop_workers()
    for i in range(first, len(shared_server.workers)):
        lines = (shared_server.home / f"worker-{i}.log").read_text(errors="replace").splitlines()
        print(f"--- worker-{i}.log (last 40 of {len(lines)} lines)", *lines[-40:], sep="\n")


def _checkpointed_and_running(client, job_id):
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status not in ("succeeded", "failed"), "the job finished before the test could interrupt it"
    return job.status == "running" and client.fine_tuning.jobs.checkpoints.list(job_id).data


def _metric_steps(client, job_id):
    return sorted(e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics")


def _claims(server, job_id, logs):
    return sum(1 for log in logs for line in log.read_text().splitlines()
               if line.startswith("{") and json.loads(line).get("job") == job_id and json.loads(line).get("event") == "claimed")


def test_sigkill_worker_mid_job_resumes_from_checkpoint_on_one_worker(server):
    client = server.client("acme")
    f = client.files.create(file=jsonl(chat_rows(24)), purpose="fine-tune")
    first = server.start_worker(*server.worker_args)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    seen = wait_for(lambda: _checkpointed_and_running(client, job.id), what="a first checkpoint")[0].step_number
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Two fresh workers race for the orphaned job once its lease has run out: exactly one resumes it (and keeps it).
    n_before = len(server.workers)
    server.start_worker(*server.handover_args)
    server.start_worker(*server.handover_args)
    job = wait_finished(client, job.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    resumed = [m for m in messages if "resumed by worker" in m]
    assert len(resumed) == 1 and "from its checkpoint at step" in resumed[0], messages
    assert seen <= int(resumed[0].rsplit(" ", 1)[-1]) < STEPS
    steps = _metric_steps(client, job.id)  # every step reported once (the time budget ends it before STEPS)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > seen
    logs = [server.home / f"worker-{i}.log" for i in range(n_before, n_before + 2)]
    assert _claims(server, job.id, logs) == 1


def test_cancel_stops_a_running_job(server):
    client = server.client("acme")
    f = client.files.create(file=jsonl(chat_rows(24)), purpose="fine-tune")
    server.start_worker(*server.worker_args)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    wait_for(lambda: _checkpointed_and_running(client, job.id), what="a first checkpoint")
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    stopped = wait_for(lambda: [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
                                if e.message.startswith("Training stopped (cancel)")], what="training to stop")
    steps = _metric_steps(client, job.id)
    # the worker is free again: the next job trains to the end; the cancelled one never moves on
    later = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert wait_finished(client, later.id).status == "succeeded"
    later_messages = [e.message for e in client.fine_tuning.jobs.list_events(later.id, limit=100)]
    assert not [m for m in later_messages if m.startswith("Stopped early")], "hone worker --no-early-stopping ignored"
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert _metric_steps(client, job.id) == steps and max(steps) < STEPS
    assert stopped[0].level == "info"


def test_pause_keeps_the_checkpoint_and_resume_continues_from_it(server):
    client = server.client("acme")
    lenient = server.client("acme", strict=False)  # "paused" is outside the client's status Literal
    f = client.files.create(file=jsonl(chat_rows(24)), purpose="fine-tune")
    server.start_worker(*server.worker_args)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    wait_for(lambda: _checkpointed_and_running(client, job.id), what="a first checkpoint")
    assert lenient.fine_tuning.jobs.pause(job.id).status == "paused"
    (stopped,) = wait_for(lambda: [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
                                   if e.message.startswith("Training stopped (pause)")], what="training to stop")
    assert "after its last step" not in stopped, stopped
    assert lenient.fine_tuning.jobs.retrieve(job.id).status == "paused"
    saved = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = wait_finished(client, job.id)
    assert job.status == "succeeded"
    resumed = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "resumed by worker" in e.message]
    assert resumed and resumed[0].endswith(f"from its checkpoint at step {saved}")
    steps = _metric_steps(client, job.id)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > saved


def test_sigterm_puts_the_job_back_in_the_queue_and_another_worker_resumes_it(server):
    client = server.client("acme")
    f = client.files.create(file=jsonl(chat_rows(24)), purpose="fine-tune")
    first = server.start_worker(*server.worker_args)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    wait_for(lambda: _checkpointed_and_running(client, job.id), what="a first checkpoint")
    first.send_signal(signal.SIGTERM)  # what `hone serve` does to its workers when it stops
    assert first.wait(timeout=120) == 0
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    stopped = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if " stopped" in e.message]
    assert stopped and "it resumes from step" in stopped[0]
    server.start_worker(*server.worker_args)
    assert wait_finished(client, job.id).status == "succeeded"
    steps = _metric_steps(client, job.id)
    assert steps == list(range(1, steps[-1] + 1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux's")
def test_workers_stop_when_their_server_dies(tiny_model, tmp_path):
    import os

    srv = start_server(tmp_path / "dies", "--base-model", f"tiny={tiny_model}", workers=1)
    children = [int(pid) for pid in open(f"/proc/{srv.process.pid}/task/{srv.process.pid}/children").read().split()]
    assert len(children) == 1
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait()

    def gone():
        try:
            os.kill(children[0], 0)
            with open(f"/proc/{children[0]}/status") as status:
                return "zombie" in status.read()
        except ProcessLookupError:
            return True
    wait_for(gone, timeout=60, what="the worker to exit")
