"""hone monitor: health figures, the drift statistic, alarms, the --json last line and the HTML page.

Drift runs on the orders demo data (src/hone/datasets/orders) embedded with the real MiniLM encoder: served
inputs drawn from its validation split must not alarm; inputs in a template the model never saw must.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from hone.config import RunConfig, to_yaml
from hone.errors import ConfigError, UserError
from hone.monitor.alarms import load_thresholds
from hone.monitor.drift import label_shift, mmd_test
from hone.monitor.health import health
from hone.monitor.traffic import Exchange
from hone.serve.capture import CaptureWriter
from hone.serve.settings import ServeSettings

ORDERS = Path(__file__).parents[1] / "src" / "hone" / "datasets" / "orders"


def test_mmd_p_value_is_large_for_one_distribution_and_small_for_a_shifted_one():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 8))
    same = mmd_test(reference, rng.normal(size=(60, 8)))
    shifted = mmd_test(reference, rng.normal(0.6, 1.0, size=(60, 8)))
    assert same.p_value > 0.05 and shifted.p_value < 0.01 and shifted.mmd2 > same.mmd2


def test_label_shift_flags_a_changed_label_mix_only():
    training = ["refund"] * 50 + ["shipping"] * 50
    assert label_shift(training, ["refund"] * 20 + ["shipping"] * 20).p_value > 0.05
    moved = label_shift(training, ["refund"] * 36 + ["shipping"] * 2 + ["no idea"] * 2)
    assert moved.p_value < 0.01 and moved.served["(other)"] == 0.05


def test_health_counts_empty_refusal_and_never_stopping_answers_and_bad_feedback():
    def ex(text: str, finish: str = "stop", rating: str | None = None) -> Exchange:
        return Exchange(id="chatcmpl-x", org="acme", model="m", served="m", run_dir=None, kind="chat",
                        messages=[{"role": "user", "content": "q"}],
                        answers=[{"text": text, "finish_reason": finish, "tokens": 4}], latency_ms=10.0,
                        prompt_tokens=3, completion_tokens=4, max_tokens=8, rating=rating)
    figures = health([ex(""), ex("I'm sorry, I can't help with that."), ex("42 42 42", "length", "bad"),
                      ex("fine", rating="good")])
    assert (figures["empty_rate"], figures["refusal_rate"], figures["never_stops_rate"]) == (0.25, 0.25, 0.25)
    assert (figures["rated"], figures["bad_share"], figures["requests"]) == (2, 0.5, 4)


def capture_orders(db: str, run: Path, inputs: list[str], days_ago: float = 0.0) -> None:
    """Captured chats of a tuned model whose run folder trained on the orders demo data."""
    run.mkdir(parents=True, exist_ok=True)
    config = RunConfig.model_validate({"data": {"train": str(run / "train.jsonl"), "test": str(ORDERS / "test.jsonl")}})
    (run / "train.jsonl").write_text("".join((ORDERS / "train.jsonl").read_text().splitlines(True)[:300]))
    (run / "config.yaml").write_text(to_yaml(config))
    writer = CaptureWriter(ServeSettings(db=db, capture=True))
    for i, text in enumerate(inputs):
        writer.submit(Exchange(id=f"chatcmpl-{days_ago}-{i}", org="acme", model="ft:orders", served="ft:orders",
                               run_dir=str(run), kind="chat", messages=[{"role": "user", "content": text}],
                               answers=[{"text": "{}", "finish_reason": "stop", "tokens": 2}], latency_ms=50.0 + i,
                               prompt_tokens=20, completion_tokens=2, max_tokens=64,
                               created_at=time.time() - days_ago * 86400))
    writer.close()


def new_template(n: int) -> list[str]:
    rng = random.Random(0)
    return [f"ORDER FORM #{1000 + i} | customer={rng.choice(['Ada Park', 'Lin Osei', 'Tom Berg'])} | "
            f"sku={rng.choice(['blue mug', 'desk lamp', 'usb cable'])} | qty={rng.randint(1, 50)} | "
            f"deliver=2027-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}" for i in range(n)]


def test_monitor_json_reports_drift_on_a_new_template_and_none_on_familiar_inputs(cli, tmp_path):
    calm_db, drift_db = f"sqlite:///{tmp_path / 'calm.db'}", f"sqlite:///{tmp_path / 'drift.db'}"
    familiar = [json.loads(line)["messages"][1]["content"]
                for line in (ORDERS / "validation.jsonl").read_text().splitlines()[:40]]
    capture_orders(calm_db, tmp_path / "run", familiar)
    capture_orders(drift_db, tmp_path / "run", familiar[:20], days_ago=3)
    capture_orders(drift_db, tmp_path / "run", new_template(40))

    calm = cli("monitor", "ft:orders", "--json", "--strict", "--db", calm_db)
    assert calm.returncode == 0, calm.stderr
    result = json.loads(calm.stdout.splitlines()[-1])
    assert result["requests"] == 40 and result["drift"]["p_value"] > 0.05 and result["alarms"] == []

    page = tmp_path / "page.html"
    shifted = cli("monitor", "ft:orders", "--since", "1d", "--json", "--strict", "--report", "--output", str(page),
                  "--db", drift_db)
    assert shifted.returncode == 1                        # --strict: an alarm fired
    result = json.loads(shifted.stdout.splitlines()[-1])
    assert result["requests"] == 40 and result["drift"]["p_value"] < 0.01 and result["drift"]["drifted"]
    assert [a["name"] for a in result["alarms"]] == ["drift"]
    assert result["outliers"][0]["input"].startswith("ORDER FORM")
    assert "Input drift" in page.read_text() and "ORDER FORM" in page.read_text()

    import hone

    assert hone.monitor_model("ft:orders", db=drift_db).requests == 60   # the front door: all the captured traffic
    future = cli("monitor", "ft:orders", "--since", "2999-01-01", "--db", drift_db)
    assert future.returncode == 2 and "no captured traffic for model 'ft:orders' in this window" in future.stderr


def test_thresholds_file_errors_name_the_file_line_and_key(tmp_path):
    path = tmp_path / "alarms.yaml"
    path.write_text("drift_p: 0.05\nbad_feedbak: 0.3\n")
    with pytest.raises(ConfigError, match=r"alarms.yaml:2: unknown threshold 'bad_feedbak'; did you mean"):
        load_thresholds(path)
    path.write_text("drift_p: 2\n")
    with pytest.raises(ConfigError, match=r"alarms.yaml:1: drift_p"):
        load_thresholds(path)
    path.write_text("empty: 0.5\n")
    assert load_thresholds(path).empty == 0.5


def test_monitor_names_the_models_it_has_traffic_for(tmp_path):
    from hone.monitor.watch import monitor_model

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    with pytest.raises(UserError, match="start the server with hone serve --capture"):
        monitor_model("ft:nothing", url=db)


def test_from_traffic_builds_chat_data_from_corrections_without_leaking_into_the_test_split(cli, tmp_path):
    from hone.monitor import traffic

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    run = tmp_path / "run"
    run.mkdir()
    chat = lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}  # noqa: E731
    (run / "train.jsonl").write_text("".join(json.dumps(chat(f"Order {i} mugs for Ada", f'{{"quantity": {i}}}')) + "\n"
                                             for i in range(1, 30)))
    (run / "test.jsonl").write_text(json.dumps(chat("Order 99 lamps for Lin", '{"quantity": 99}')) + "\n")
    config = RunConfig.model_validate({"data": {"train": str(run / "train.jsonl"), "test": str(run / "test.jsonl")}})
    (run / "config.yaml").write_text(to_yaml(config))
    asked = {"new": ("ORDER FORM qty=7 sku=mug", "bad", '{"quantity": 7} mail ada@example.com'),
             "leak": ("Order 99 lamps for Lin", "bad", '{"quantity": 99}'),
             "copy": ("Order 3 mugs for Ada", "bad", '{"quantity": 3}'),
             "silent": ("ORDER FORM qty=8 sku=mug", "bad", None),
             "liked": ("ORDER FORM qty=9 sku=mug", "good", None)}
    writer = CaptureWriter(ServeSettings(db=db, capture=True))
    for name, (question, _, _) in asked.items():
        writer.submit(Exchange(id=f"chatcmpl-{name}", org="acme", model="ft:orders", served="ft:orders",
                               run_dir=str(run), kind="chat", messages=[{"role": "user", "content": question}],
                               answers=[{"text": '{"quantity": 1}', "finish_reason": "stop", "tokens": 5}],
                               latency_ms=5.0, prompt_tokens=5, completion_tokens=5, max_tokens=16))
    writer.close()
    with traffic.session(db) as s:
        for name, (_, rating, correction) in asked.items():
            s.add(traffic.Feedback(id=f"chatcmpl-{name}", org="acme", rating=rating, correction=correction,
                                   redacted=[], created_at=time.time()))
        s.commit()

    out = tmp_path / "next.jsonl"
    done = cli("data", "from-traffic", "ft:orders", "--output", str(out), "--json", "--db", db)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [chat("ORDER FORM qty=7 sku=mug", '{"quantity": 7} mail [EMAIL]')]
    assert result["dropped"] == {"leaks_into_test": ["chatcmpl-leak"], "copy_of_training": ["chatcmpl-copy"],
                                 "no_correction": ["chatcmpl-silent"], "good_not_included": ["chatcmpl-liked"]}
    assert result["redacted"] == 1 and result["report"]["valid"] == 1
    lineage = json.loads((tmp_path / "next.jsonl.lineage.json").read_text())
    assert lineage["model"] == "ft:orders" and [r["id"] for r in lineage["requests"]] == ["chatcmpl-new"]
    assert lineage["run_dir"] == str(run)

    import hone

    again = hone.data_from_traffic("ft:orders", tmp_path / "again.jsonl", db=db)
    assert again.examples == 1 and (tmp_path / "again.jsonl").read_text() == out.read_text()
    done = cli("data", "from-traffic", "ft:orders", "--output", str(out), "--include-good", "--db", db)
    assert done.returncode == 0 and "2 example(s) (1 corrected, 1 rated good)" in done.stdout
    assert "ORDER FORM qty=9" in out.read_text()
    nothing = cli("data", "from-traffic", "ft:other", "--output", str(tmp_path / "x.jsonl"), "--db", db)
    assert nothing.returncode == 2 and "no rated answers of model 'ft:other'" in nothing.stderr


def test_monitor_reports_a_shift_in_predicted_labels_for_a_label_task(tmp_path):
    from hone.monitor.watch import monitor_model

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    train = tmp_path / "labels.jsonl"
    train.write_text("".join(json.dumps({"text": f"ticket {i}", "label": "refund" if i % 2 else "shipping"}) + "\n"
                             for i in range(60)))
    writer = CaptureWriter(ServeSettings(db=db, capture=True))
    for i in range(12):
        writer.submit(Exchange(id=f"chatcmpl-{i}", org="acme", model="router", served="router", run_dir=None,
                               kind="chat", messages=[{"role": "user", "content": f"where is my parcel {i % 3}"}],
                               answers=[{"text": "shipping", "finish_reason": "stop", "tokens": 1}], latency_ms=5.0,
                               prompt_tokens=5, completion_tokens=1, max_tokens=4))
    writer.close()
    result = monitor_model("router", url=db, training_data=train)
    assert result.drift == {"skipped": "3 distinct inputs, fewer than min_inputs=20"}
    assert result.labels["served"] == {"shipping": 1.0} and result.labels["training"]["refund"] == 0.5
    assert result.labels["p_value"] < 0.01 and [a["name"] for a in result.alarms] == ["label_shift"]
