"""hone serve --capture and POST /v1/feedback: what is stored, redacted, kept, dropped, and who may rate it.

The app runs in-process over the tiny model (serve_helpers.in_process_app), driven by the official openai
client through starlette's TestClient (an httpx client), so ids are the ones a real client sees.
"""
from __future__ import annotations

import json
import time

import openai
import pytest

from hone.data.pii import redact
from hone.errors import ConfigError
from hone.monitor import traffic
from hone.serve.capture import CaptureWriter
from hone.serve.settings import ServeSettings
from serve_helpers import in_process_app

PERSONAL = "Mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111."


def client(app, key: str | None = None) -> openai.OpenAI:
    key = key or app.auth["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=app.http, max_retries=0)


def stored(app) -> list[traffic.Exchange]:
    app.http.app.state.capture.flush()
    return traffic.read_exchanges(url=app.settings.db)


@pytest.fixture
def captured(tiny_model, tmp_path):
    app = in_process_app(tiny_model, tmp_path, capture=True, capture_models=("tiny",))
    with app.http:
        yield app


def test_capture_stores_each_request_with_the_id_the_client_sees_and_redacts_personal_data(captured):
    c = client(captured)
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PERSONAL}], max_tokens=3)
    text = c.completions.create(model="tiny", prompt="Order for bob@example.org", max_tokens=2)
    stream = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       stream=True)
    streamed_id = {chunk.id for chunk in stream}
    rows = {r.id: r for r in stored(captured)}
    assert set(rows) == {chat.id, text.id} | streamed_id
    one = rows[chat.id]
    assert one.kind == "chat" and one.model == "tiny" and one.org == "acme" and one.latency_ms > 0
    assert one.prompt_tokens == chat.usage.prompt_tokens and one.completion_tokens == chat.usage.completion_tokens
    assert "jane.doe" not in one.prompt and "7946" not in one.prompt and "4111" not in one.prompt
    assert "[EMAIL]" in one.prompt and "[PHONE]" in one.prompt and "[CARD]" in one.prompt
    assert rows[text.id].prompt == "Order for [EMAIL]" and rows[text.id].kind == "completion"
    assert one.answer == chat.choices[0].message.content


def test_raw_text_is_kept_only_for_the_org_that_asked(tiny_model, tmp_path):
    from hone.serve.auth import create_key

    app = in_process_app(tiny_model, tmp_path, capture=True, capture_raw_orgs=("acme",), capture_models=("tiny",))
    with app.http:
        for c in (client(app), client(app, create_key("globex", app.settings.db))):
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PERSONAL}], max_tokens=2)
        assert {r.org: r.prompt for r in stored(app)} == {"acme": PERSONAL, "globex": redact(PERSONAL)[0]}


def test_capture_off_stores_nothing_and_feedback_finds_nothing(tiny_model, tmp_path):
    app = in_process_app(tiny_model, tmp_path)
    with app.http:
        c = client(app)
        answer = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert app.http.app.state.capture is None
        assert traffic.read_exchanges(url=app.settings.db) == []
        with pytest.raises(openai.NotFoundError):
            c.post("/feedback", body={"id": answer.id, "rating": "good"}, cast_to=object)


def test_capture_takes_tuned_models_only_unless_models_or_orgs_are_named(tiny_model, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app = in_process_app(tiny_model, tmp_path / "a", capture=True)       # "tiny" is a base model
    with app.http:
        client(app).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert stored(app) == []
    app = in_process_app(tiny_model, tmp_path / "b", capture=True, capture_models=("tiny",), capture_orgs=("other",))
    with app.http:
        client(app).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert stored(app) == []   # acme's traffic, and only org "other" is captured


def test_feedback_rates_own_answers_only_redacts_corrections_and_the_latest_wins(captured, cli, tmp_path):
    from hone.serve.auth import create_key

    mine = client(captured)
    answer = mine.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    theirs = client(captured, create_key("globex", captured.settings.db))
    with pytest.raises(openai.NotFoundError):
        theirs.post("/feedback", body={"id": answer.id, "rating": "bad"}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        mine.post("/feedback", body={"id": "chatcmpl-nope", "rating": "bad"}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        mine.post("/feedback", body={"id": answer.id, "rating": "meh"}, cast_to=object)
    first = mine.post("/feedback", body={"id": answer.id, "rating": "good"}, cast_to=object)
    assert first["rating"] == "good" and first["object"] == "feedback"
    fixed = mine.post("/feedback", body={"id": answer.id, "rating": "bad", "correction": "write to a@b.example.com"},
                      cast_to=object)
    assert fixed["correction"] == "write to [EMAIL]"
    [row] = traffic.read_exchanges(url=captured.settings.db, rated=True)
    assert (row.rating, row.correction) == ("bad", "write to [EMAIL]")
    assert traffic.read_exchanges(url=captured.settings.db, org="globex") == []
    listed = cli("feedback", "list", "--json", "--rating", "bad", "--db", captured.settings.db)
    assert [r["id"] for r in json.loads(listed.stdout)] == [answer.id]
    done = cli("feedback", "export", "--output", str(tmp_path / "fb.jsonl"), "--org", "globex", "--db",
               captured.settings.db)
    assert done.returncode == 0 and (tmp_path / "fb.jsonl").read_text() == ""
    assert "--since 'soon'" in cli("feedback", "list", "--since", "soon", "--db", captured.settings.db).stderr


def record(n: int, age_days: float = 0.0) -> traffic.Exchange:
    return traffic.Exchange(id=f"chatcmpl-{n}", org="acme", model="m", served="m", run_dir=None, kind="chat",
                            messages=[{"role": "user", "content": f"q{n}"}],
                            answers=[{"text": "a", "finish_reason": "stop", "tokens": 1}], latency_ms=1.0,
                            prompt_tokens=1, completion_tokens=1, max_tokens=8,
                            created_at=time.time() - age_days * 86400)


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    settings = ServeSettings(db=f"sqlite:///{tmp_path / 's.db'}", capture=True, capture_queue=2)
    writer = CaptureWriter(settings)
    writer._thread = object()   # type: ignore[assignment]  # the writer is busy: nothing leaves the queue
    for n in range(5):
        writer.submit(record(n))
    assert writer.dropped == 3
    writer._thread = None
    writer.start()
    writer.close()
    assert writer.written == 2
    assert [r.id for r in traffic.read_exchanges(url=settings.db)] == ["chatcmpl-0", "chatcmpl-1"]


def test_retention_deletes_captures_and_feedback_older_than_the_limit(tmp_path):
    settings = ServeSettings(db=f"sqlite:///{tmp_path / 's.db'}", capture=True, capture_days=1)
    writer = CaptureWriter(settings)
    for n, age in enumerate((3.0, 0.0)):
        writer.submit(record(n, age))
    writer.close()
    with traffic.session(settings.db) as s:
        s.add(traffic.Feedback(id="chatcmpl-0", org="acme", rating="bad", correction="x", redacted=[],
                               created_at=time.time()))
        s.commit()
    later = CaptureWriter(settings)
    later.start()     # the writer sweeps at start, then hourly
    later.close()
    assert [r.id for r in traffic.read_exchanges(url=settings.db)] == ["chatcmpl-1"]
    with traffic.session(settings.db) as s:
        assert s.query(traffic.Feedback).count() == 0


def test_capture_settings_without_capture_are_refused():
    with pytest.raises(ConfigError, match="--capture-raw .*add --capture"):
        ServeSettings(capture_raw=True)
    with pytest.raises(ConfigError, match="--capture-model"):
        ServeSettings(capture_models=("m",))
    env = ServeSettings(capture=True, capture_orgs=("acme",), capture_days=7).to_env()
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env):
        again = ServeSettings.from_env()
    assert (again.capture, again.capture_orgs, again.capture_days) == (True, ("acme",), 7.0)


def test_hone_serve_refuses_capture_options_without_capture_before_starting(cli):
    for args in (["--capture-days", "3"], ["--capture-raw"], ["--capture-raw-org", "acme"], ["--capture-org", "acme"]):
        done = cli("serve", "--workers", "0", *args)
        assert done.returncode == 2 and "add --capture" in done.stderr, (args, done.stderr)
