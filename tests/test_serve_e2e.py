"""hone serve end to end, driven by the official openai client in strict response validation."""
from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from serve_helpers import chat_rows, jsonl, start_server, wait_finished
from test_registry import postgres_url  # noqa: F401 - the throwaway PostgreSQL server fixture


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("serve"), "--base-model", f"tiny={tiny_model}", "--max-steps", "3",
                       "--lease-seconds", "3", "--max-upload-mb", "0.05", "--engine", "transformers", workers=1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def acme(server):
    return server.client("acme")


def test_upload_train_poll_events_checkpoints_and_results(acme):
    f = acme.files.create(file=jsonl(chat_rows(12)), purpose="fine-tune",
                          expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.object == "file" and f.status == "processed" and f.filename == "train.jsonl"
    assert f.expires_at == f.created_at + 3600
    assert f.id in [x.id for x in acme.files.list(purpose="fine-tune")]
    assert acme.files.content(f.id).read().decode().count("\n") == 11

    job = acme.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, suffix="e2e", seed=7, metadata={"suite": "e2e"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}})
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert job.method.supervised.hyperparameters.batch_size == "auto"

    job = wait_finished(acme, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny:acme:e2e:") and len(job.fine_tuned_model.split(":")[-1]) == 8
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.error is None
    # "auto" came back resolved: 12 examples -> 100 // 12 = 8 epochs by OpenAI's rule, unless given
    hp = job.method.supervised.hyperparameters
    assert hp.n_epochs == 2 and hp.batch_size == 12 and hp.learning_rate_multiplier == 1.0
    assert job.hyperparameters.n_epochs == 2

    events = list(acme.fine_tuning.jobs.list_events(job.id, limit=2))  # pages of 2, followed by `after`
    messages = [e.message for e in events]
    assert messages[-1].startswith("Created fine-tuning job") and messages[0] == "The job has successfully completed"
    assert f"New fine-tuned model created: {job.fine_tuned_model}" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [3, 2, 1] and all(e.data["train_loss"] > 0 for e in metrics)
    assert len({e.id for e in events}) == len(events) and events[0].created_at >= events[-1].created_at

    checkpoints = list(acme.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and checkpoints[0].step_number == 3
    for c in checkpoints:
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.metrics.train_loss > 0 and c.metrics.valid_loss > 0

    assert job.id in [j.id for j in acme.fine_tuning.jobs.list(metadata={"suite": "e2e"})]
    assert job.id not in [j.id for j in acme.fine_tuning.jobs.list(metadata={"suite": "other"})]
    results = acme.files.content(job.result_files[0]).text.splitlines()
    assert results[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(results) == 4


def test_malformed_upload_is_rejected_with_line_and_field(acme):
    good = json.dumps(chat_rows(1)[0])
    bad = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
    with pytest.raises(openai.BadRequestError) as caught:
        acme.files.create(file=("bad.jsonl", f"{good}\n{good}\n{bad}\n".encode()), purpose="fine-tune")
    error = caught.value
    assert error.code == "invalid_file_format" and error.param == "file"
    assert "Line 3" in error.message and "messages[0].role" in error.message and "robot" in error.message
    with pytest.raises(openai.BadRequestError, match="Line 1"):
        acme.files.create(file=("broken.jsonl", b'{"messages": [\n'), purpose="fine-tune")


def test_too_few_examples_fails_the_job_with_openai_error(acme):
    f = acme.files.create(file=jsonl(chat_rows(3)), purpose="fine-tune")
    job = wait_finished(acme, acme.fine_tuning.jobs.create(model="tiny", training_file=f.id).id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_n_examples" and job.error.param == "training_file"
    assert job.error.message == "Training file has 3 example(s), but must have at least 10 examples"
    assert any(e.level == "error" for e in acme.fine_tuning.jobs.list_events(job.id))


def test_request_errors_have_openai_shapes(acme):
    f = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as caught:
        acme.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="No such File object: file-missing"):
        acme.fine_tuning.jobs.create(model="tiny", training_file="file-missing")
    with pytest.raises(openai.BadRequestError) as caught:
        acme.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                     method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}})
    assert caught.value.param == "method.supervised.hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError):
        acme.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="has:colon")
    with pytest.raises(openai.NotFoundError):
        acme.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        acme.files.create(file=jsonl(chat_rows(10)), purpose="batch")
    with pytest.raises(openai.APIStatusError) as caught:  # the server was started with --max-upload-mb 0.05
        acme.files.create(file=jsonl(chat_rows(1000)), purpose="fine-tune")
    assert caught.value.status_code == 413 and caught.value.code == "file_too_large"


def test_wrong_or_revoked_key_is_401(server):
    from openai import OpenAI

    bad = OpenAI(base_url=server.url, api_key="hone-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()
    key = server.key("acme")
    import subprocess
    import sys

    from serve_helpers import hone_env

    listed = subprocess.run([sys.executable, "-m", "hone.cli", "keys", "list", "--json", "--db", server.db],
                            env=hone_env(server.home), capture_output=True, text=True, check=True)
    assert key not in listed.stdout  # only a prefix is ever shown
    key_id = [k["id"] for k in json.loads(listed.stdout) if key.startswith(k["prefix"][:-3])][-1]
    subprocess.run([sys.executable, "-m", "hone.cli", "keys", "revoke", key_id, "--db", server.db],
                   env=hone_env(server.home), check=True, capture_output=True)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url, api_key=key, max_retries=0).files.list()


def test_pagination_follows_after_and_has_more(acme):
    ids = [acme.files.create(file=jsonl(chat_rows(10), f"p{i}.jsonl"), purpose="fine-tune").id for i in range(5)]
    page = acme.files.list(limit=2, order="asc", after=ids[0])
    assert [f.id for f in page.data] == ids[1:3] and page.has_more
    assert page.first_id == ids[1] and page.last_id == ids[2]
    listed = [f.id for f in acme.files.list(limit=2, order="desc")]  # iterating fetches every page
    assert [i for i in listed if i in ids] == ids[::-1]

    jobs = [acme.fine_tuning.jobs.create(model="tiny", training_file=i, metadata={"page": "yes"}) for i in ids[:3]]
    for job in jobs:
        acme.fine_tuning.jobs.cancel(job.id)
    first = acme.fine_tuning.jobs.list(limit=2, metadata={"page": "yes"})
    assert [j.id for j in first.data] == [jobs[2].id, jobs[1].id] and first.has_more
    rest = acme.fine_tuning.jobs.list(limit=2, after=jobs[1].id, metadata={"page": "yes"})
    assert [j.id for j in rest.data] == [jobs[0].id] and rest.has_more is False


def test_cancel_queued_job_never_trains(acme):
    f = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    cancelled = acme.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a job whose status is cancelled"):
        acme.fine_tuning.jobs.cancel(job.id)
    # a job created after it trains and finishes; the cancelled one stays cancelled, with no model
    later = acme.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert wait_finished(acme, later.id).status == "succeeded"
    again = acme.fine_tuning.jobs.retrieve(job.id)
    assert again.status == "cancelled" and again.fine_tuned_model is None


def test_another_org_gets_404_for_everything(server, acme):
    other = server.client("globex")
    f = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    job = wait_finished(acme, acme.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="mine").id)
    assert job.status == "succeeded"
    for call in (lambda: other.files.retrieve(f.id), lambda: other.files.content(f.id),
                 lambda: other.files.delete(f.id), lambda: other.fine_tuning.jobs.retrieve(job.id),
                 lambda: other.fine_tuning.jobs.cancel(job.id), lambda: other.fine_tuning.jobs.list_events(job.id),
                 lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: other.fine_tuning.jobs.create(model="tiny", training_file=f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    own = other.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as caught:  # acme's tuned model does not exist for globex
        other.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=own.id)
    assert caught.value.code == "model_not_found"
    assert f.id not in [x.id for x in other.files.list()]
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list()]
    assert acme.files.retrieve(f.id).id == f.id  # still there for its owner

    from hone.serve.catalog import DatabaseCatalog
    from hone.serve.settings import ServeSettings

    catalog = DatabaseCatalog(ServeSettings(db=server.db, base_models={"tiny": "/unused"}))
    assert catalog.resolve("globex", job.fine_tuned_model) is None
    mine = catalog.resolve("acme", job.fine_tuned_model)
    assert mine.owned_by == "acme" and mine.base == "/unused" and (Path(mine.tuned) / "adapter").is_dir()
    assert job.fine_tuned_model not in [m.id for m in catalog.list("globex")]
    assert not catalog.delete("globex", job.fine_tuned_model) and catalog.delete("acme", job.fine_tuned_model)
    assert catalog.resolve("acme", job.fine_tuned_model) is None


def test_openapi_schema_is_published(server):
    import urllib.request

    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/openapi.json") as response:
        paths = json.load(response)["paths"]
    assert "/v1/files" in paths and "/v1/fine_tuning/jobs/{job_id}/checkpoints" in paths


def test_dpo_job_trains_on_preference_pairs(acme):
    pairs = [{"input": {"messages": [{"role": "user", "content": f"Greet user {i}"}]},
              "preferred_output": [{"role": "assistant", "content": f"Hello, user {i}!"}],
              "non_preferred_output": [{"role": "assistant", "content": "No."}]} for i in range(12)]
    f = acme.files.create(file=jsonl(pairs, "pairs.jsonl"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="beta"):
        acme.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                     method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}})
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    job = wait_finished(acme, job.id)
    assert job.status == "succeeded", job.error
    hp = job.method.dpo.hyperparameters
    assert hp.beta == 0.2 and hp.n_epochs == 8 and hp.batch_size == 12  # "auto" resolved for 12 pairs
    metrics = [e for e in acme.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"]
    assert metrics and 0 < metrics[-1].data["train_loss"] < 1  # DPO's loss starts at ln 2
    # a chat file cannot feed a dpo job: the job fails on validation, naming the file
    chats = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    failed = wait_finished(acme, acme.fine_tuning.jobs.create(model="tiny", training_file=chats.id,
                                                              method={"type": "dpo"}).id)
    assert failed.status == "failed" and failed.error.code == "invalid_file_format"
    assert failed.error.param == "training_file" and "preference pairs" in failed.error.message


def test_a_tuned_model_can_be_tuned_again(acme):
    f = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    first = wait_finished(acme, acme.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="v1").id)
    second = wait_finished(acme, acme.fine_tuning.jobs.create(model=first.fine_tuned_model, training_file=f.id,
                                                              suffix="v2").id)
    assert second.status == "succeeded", second.error
    assert second.model == first.fine_tuned_model and second.fine_tuned_model.startswith("ft:tiny:acme:v2:")


def test_postgresql_database_runs_a_job(tiny_model, tmp_path, postgres_url):
    srv = start_server(tmp_path / "pg", "--base-model", f"tiny={tiny_model}", "--max-steps", "2", workers=1,
                       db=postgres_url)
    try:
        client = srv.client("acme")
        f = client.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
        job = wait_finished(client, client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id)
        assert job.status == "succeeded", job.error
        assert [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"] == [2, 1]
        with pytest.raises(openai.NotFoundError):
            srv.client("globex").fine_tuning.jobs.retrieve(job.id)
    finally:
        srv.stop()
        from hone.serve import db

        with db.session(postgres_url) as s:
            db.Base.metadata.drop_all(s.get_bind())


@pytest.fixture(params=["transformers", "llamacpp"])
def engine_server(request, server, tiny_model, tmp_path_factory):
    """The module's server for transformers; a server of its own for another engine (skipped, with the
    engine's name, where that engine is not installed)."""
    if request.param == "transformers":
        yield server
        return
    from hone.serve.engines.table import ENGINES

    if not ENGINES[request.param].installed():
        pytest.skip(f"engine {request.param} is not installed ({ENGINES[request.param].install})")
    srv = start_server(tmp_path_factory.mktemp(request.param), "--base-model", f"tiny={tiny_model}", "--max-steps",
                       "3", "--engine", request.param, workers=1)
    yield srv
    srv.stop()


def test_chat_with_the_tuned_model_streamed_and_not(engine_server):
    """Runs once the inference router (serve/inference.py, part B) is in the tree."""
    pytest.importorskip("hone.serve.inference")
    server = engine_server
    acme = server.client("acme")
    f = acme.files.create(file=jsonl(chat_rows(10)), purpose="fine-tune")
    job = wait_finished(acme, acme.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="chat").id)
    assert job.status == "succeeded", job.error
    assert {"tiny", job.fine_tuned_model} <= {m.id for m in acme.models.list()}
    assert acme.models.retrieve(job.fine_tuned_model).owned_by == "acme"
    ask = {"model": job.fine_tuned_model, "messages": [{"role": "user", "content": "apple"}], "max_tokens": 6,
           "temperature": 0}
    reply = acme.chat.completions.create(**ask)
    assert reply.choices[0].message.role == "assistant" and reply.usage.total_tokens > 0
    chunks = list(acme.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    completion = acme.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4 and completion.choices[0].finish_reason == "length"
    other = server.client("globex")
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(**ask)
    assert job.fine_tuned_model not in {m.id for m in other.models.list()}
    assert acme.models.delete(job.fine_tuned_model).deleted is True
    with pytest.raises(openai.NotFoundError):
        acme.chat.completions.create(**ask)


def test_request_log_is_one_json_line_per_request_without_keys(server):
    client = server.client("initech")
    key = client.api_key
    client.files.list()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith('{"time"')]
    requests = [line for line in lines if line.get("request_id") and line.get("org") == "initech"]
    assert [(r["method"], r["path"], r["status"]) for r in requests[-2:]] == [
        ("GET", "/v1/files", 200), ("GET", "/v1/files/file-nope", 404)]
    assert all(isinstance(r["ms"], float) for r in requests)
    assert key not in server.log.read_text()
