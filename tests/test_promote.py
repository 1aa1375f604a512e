"""The next version of a served model: train --continue, promote over production, serve name@production."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hone
from hone.errors import UserError
from hone.registry import get_run, set_tag
from serve_helpers import in_process_app

TRAIN = {"batch_size": 8, "micro_batch_size": 8, "threads": 1, "report_to": "none"}


def train_run(tiny_model, files, tmp_path, folder, **overrides):
    options = {"data": str(files["train"]), "validation": str(files["validation"]), "test": str(files["test"]),
               "output": str(tmp_path / folder), "max_steps": 3, "lr": 3e-3, "objective": "sft",
               "data__max_length": 64, **{f"train__{k}": v for k, v in TRAIN.items()}}
    return hone.train(**{**options, **overrides})


@pytest.fixture
def parent(tiny_model, chat_files, tmp_path):
    """orders:1, a finished LoRA run on the tiny model, tagged production."""
    result = train_run(tiny_model, chat_files, tmp_path, "parent", model=str(tiny_model), name="orders")
    set_tag("orders:1", "production")
    return result


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "adapter" / "adapter_model.safetensors"))


def test_continue_starts_from_the_parents_adapter_replays_its_data_and_records_lineage(
        parent, tiny_model, chat_files, tmp_path):
    # lr so small that one step cannot move the weights: the child's adapter is then the parent's
    same = {"max_steps": 1, "lr": 1e-12, "data": str(chat_files["train"])}
    child = train_run(tiny_model, chat_files, tmp_path, "child", continue_from="orders@production", **same)
    before, after = adapter_weights(parent.run_dir), adapter_weights(child.run_dir)
    assert before.keys() == after.keys()
    assert any(t.abs().max() > 0 for k, t in before.items() if "lora_B" in k)  # a fresh adapter's B is zero
    assert all(torch.allclose(before[k], after[k], atol=1e-7) for k in before)
    # step 1's loss is the parent's, well below a fresh adapter's on the same task (which starts as the bare base)
    fresh = train_run(tiny_model, chat_files, tmp_path, "fresh", model=str(tiny_model), name="fresh", **same)
    first = lambda run: json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]  # noqa: E731
    assert first(child) < first(fresh) - 0.05

    row = get_run("orders:2")
    assert row.parent_id == get_run("orders:1").id and Path(row.path) == child.run_dir.resolve()
    config = row.config
    assert config["model"]["name"] == str(tiny_model) and config["model"]["continue_from"] == "orders@production"
    assert config["train"]["replay"] == 0.25 and config["train"]["replay_data"] == str(chat_files["train"])
    assert config["data"]["test"] == str(chat_files["test"])          # the parent's test split, kept
    assert config["method"]["name"] == "lora"
    assert child.baseline == "the parent run orders@production"
    # the "base" scored before training is the parent: the same score as the parent's tuned one
    assert child.base_score == json.loads((parent.run_dir / "run.json").read_text())["results"]["tuned_score"]

    with pytest.raises(UserError, match="drop --model"):
        train_run(tiny_model, chat_files, tmp_path, "x", continue_from="orders:1", model=str(tiny_model))
    with pytest.raises(UserError, match="no run 'nothing:4'"):
        train_run(tiny_model, chat_files, tmp_path, "y", continue_from="nothing:4")


WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean", "amber", "lemon"]


def verb_file(path: Path, verb: str, answer: str, n: int, offset: int = 0) -> str:
    """`verb WORD` -> a fixed answer: a task the tiny model learns in a few dozen full fine-tuning steps."""
    rows = [{"messages": [{"role": "user", "content": f"{verb} {WORDS[(i + offset) % len(WORDS)]}"},
                          {"role": "assistant", "content": answer}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_the_loop_capture_feedback_drift_new_data_continue_promote_and_serving_follows(tiny_model, tmp_path, cli):
    """Issue 21's loop end to end on the tiny model: serve orders@production with capture, traffic from the official
    openai client drifts to a new task, users correct it through /v1/feedback, `hone monitor` sees the drift, the
    corrections become the next dataset, a continued version learns it, a worse candidate is refused, the better
    one is promoted and the same server answers with it."""
    import openai

    old, old_test = verb_file(tmp_path / "old.jsonl", "Reverse", "yes", 40), verb_file(tmp_path / "old-t.jsonl",
                                                                                       "Reverse", "yes", 10, 3)
    common = {"max_steps": 60, "lr": 1e-2, "method": "full", "objective": "sft", "data__max_length": 64,
              "train__eval_every": 1000, **{f"train__{k}": v for k, v in TRAIN.items()}}
    hone.train(data=old, test=old_test, model=str(tiny_model), name="orders", output=str(tmp_path / "v1"), **common)
    set_tag("orders:1", "production")

    app = in_process_app(tiny_model, tmp_path, registry_models={"orders": "acme"}, capture=True)
    with app.http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=app.auth["Authorization"][7:],
                               http_client=app.http, max_retries=0)
        ask = lambda text: client.chat.completions.create(  # noqa: E731
            model="orders@production", max_tokens=4, temperature=0, messages=[{"role": "user", "content": text}])
        assert ask("Reverse tiger").choices[0].message.content == "yes"
        # traffic drifts to a new task the served model gets wrong; each answer is corrected by its user
        for n in range(30):
            answer = ask(f"Count {WORDS[n % len(WORDS)]} {n}")
            assert answer.choices[0].message.content == "yes"
            rated = app.http.post("/v1/feedback", headers=app.auth,
                                  json={"id": answer.id, "rating": "bad", "correction": "no"})
            assert rated.status_code == 200, rated.text
        app.http.app.state.capture.flush()

        watched = hone.monitor_model("orders@production", db=app.settings.db)
        assert watched.requests == 31 and watched.drift["p_value"] < 0.01
        assert any(a["name"] == "drift" for a in watched.alarms), watched.alarms
        data = tmp_path / "next.jsonl"
        built = hone.data_from_traffic("orders@production", data, db=app.settings.db, holdout=0.3)
        assert built.held_out == 9 and len(data.read_text().splitlines()) == 21

        # v2 learns only the new task from the bare base (it forgets the original one); v3 continues production
        # with its data replayed
        hone.train(data=str(data), test=str(built.holdout), model=str(tiny_model), name="orders",
                   output=str(tmp_path / "v2"), **common)
        hone.train(data=str(data), continue_from="orders@production", output=str(tmp_path / "v3"),
                   **{**common, "method": None, "train__replay": 0.5, "max_steps": 100, "lr": 5e-3})

        refused = cli("promote", "orders:2", "--over", "production", "--new-slice", str(built.holdout), "--json")
        assert refused.returncode == 1, refused.stderr
        decision = json.loads(refused.stdout.strip().splitlines()[-1])
        assert not decision["promoted"] and get_run("orders@production").version == 1
        assert len(decision["reasons"]) == 1 and decision["reasons"][0].startswith(
            "original test (10 items, accuracy): candidate 0.0% vs production 100.0%, difference -100.0 points")
        assert [c["passed"] for c in decision["conditions"]] == [False, True, None]   # no probe on a tiny model

        promoted = cli("promote", "orders:3", "--json")   # the new slice: the corrections from-traffic held out
        assert promoted.returncode == 0, promoted.stderr
        decision = json.loads(promoted.stdout.strip().splitlines()[-1])
        assert decision["promoted"] and not decision["reasons"] and get_run("orders@production").version == 3
        assert decision["figures"]["new_slice"]["file"] == str(built.holdout)
        assert decision["figures"]["new_slice"]["tuned"] == 1.0 and decision["figures"]["new_slice"]["base"] == 0.0
        # the same server, no restart: the next request is answered by v3, on both tasks
        unseen = json.loads(built.holdout.read_text().splitlines()[0])["messages"][0]["content"]
        assert ask(unseen).choices[0].message.content == "no"
        assert ask("Reverse tiger").choices[0].message.content == "yes"

    shown = cli("runs", "show", "orders:3", "--json")
    (recorded,) = json.loads(shown.stdout)["promotions"]
    assert recorded["promoted"] and recorded["champion_id"] == get_run("orders:1").id
    table = cli("runs", "show", "orders:2")
    assert "promotion" in table.stdout and "refused" in table.stdout and "original test" in table.stdout


def rated_traffic(db: str, run_dir: Path, corrections: dict[str, str]) -> None:
    """Captured chat requests to `orders@production` (served from `run_dir`), each rated bad with a correction."""
    import time

    from hone.monitor import traffic
    from hone.serve.capture import CaptureWriter
    from hone.serve.settings import ServeSettings

    writer = CaptureWriter(ServeSettings(db=db, capture=True))
    for n, question in enumerate(corrections):
        writer.submit(traffic.Exchange(id=f"chatcmpl-{n}", org="acme", model="orders@production", served="orders:1",
                                       run_dir=str(run_dir), kind="chat",
                                       messages=[{"role": "user", "content": question}],
                                       answers=[{"text": "?", "finish_reason": "stop", "tokens": 1}], latency_ms=5.0,
                                       prompt_tokens=5, completion_tokens=1, max_tokens=8))
    writer.close()
    with traffic.session(db) as s:
        for n, answer in enumerate(corrections.values()):
            s.add(traffic.Feedback(id=f"chatcmpl-{n}", org="acme", rating="bad", correction=answer, redacted=[],
                                   created_at=time.time()))
        s.commit()


def test_from_traffic_holds_out_corrections_and_promote_scores_the_candidate_on_them(
        parent, tiny_model, chat_files, tmp_path, cli):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    rated_traffic(db, parent.run_dir, {f"Count {word} {n}": "no" for n, word in enumerate(WORDS)})
    data = tmp_path / "next.jsonl"
    done = cli("data", "from-traffic", "orders@production", "--output", str(data), "--holdout", "0.3", "--db", db)
    assert done.returncode == 0, done.stderr
    held = tmp_path / "next.holdout.jsonl"
    assert f"{held}: 3 corrected example(s) held out" in " ".join(done.stdout.split())
    question = lambda line: json.loads(line)["messages"][0]["content"]  # noqa: E731
    trained, held_out = [{question(x) for x in f.read_text().splitlines()} for f in (data, held)]
    assert len(trained) == 7 and len(held_out) == 3 and not trained & held_out
    lineage = json.loads(Path(f"{data}.lineage.json").read_text())["holdout"]
    assert lineage["file"] == str(held) and lineage["examples"] == 3 and lineage["share"] == 0.3
    again = hone.data_from_traffic("orders@production", tmp_path / "again.jsonl", db=db, holdout=0.3)
    assert again.held_out == 3 and again.holdout == tmp_path / "again.holdout.jsonl"
    assert (tmp_path / "again.holdout.jsonl").read_text() == held.read_text()     # seeded: the same draw

    train_run(tiny_model, chat_files, tmp_path, "next", continue_from="orders@production", data=str(data),
              max_steps=1)
    promoted = cli("promote", "orders:2", "--over", "production", "--json")   # no --new-slice
    assert promoted.returncode in (0, 1), promoted.stderr
    assert f"new slice: {held}, held out by hone data from-traffic" in " ".join(promoted.stderr.split())
    decision = json.loads(promoted.stdout.strip().splitlines()[-1])
    assert decision["figures"]["new_slice"]["n"] == 3 and decision["figures"]["new_slice"]["file"] == str(held)

    # a candidate whose training file has no held-out slice: promote asks for --new-slice, naming why
    Path(f"{data}.lineage.json").write_text(json.dumps({"holdout": None}))
    refused = cli("promote", "orders:2", "--over", "production")
    assert refused.returncode == 2 and "give --new-slice FILE" in refused.stderr
    assert "no held-out slice recorded" in " ".join(refused.stderr.split())


def test_promote_force_moves_the_tag_past_a_failed_condition_and_eval_base_takes_a_run_reference(
        parent, tiny_model, chat_files, tmp_path, cli):
    # orders:2 is orders:1 unchanged (lr 1e-12): it cannot be shown better on any slice
    train_run(tiny_model, chat_files, tmp_path, "same", continue_from="orders@production", max_steps=1, lr=1e-12)
    test = str(chat_files["test"])
    refused = cli("promote", "orders:2", "--new-slice", test, "--json")
    assert refused.returncode == 1 and get_run("orders@production").version == 1
    forced = cli("promote", "orders:2", "--new-slice", test, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    decision = json.loads(forced.stdout.strip().splitlines()[-1])
    assert decision["promoted"] and decision["forced"] and get_run("orders@production").version == 2
    (skipped,) = decision["reasons"]
    assert skipped.startswith("new slice (4 items") and skipped.endswith("not shown better")
    said = " ".join(forced.stderr.split())
    assert "orders@production -> orders:2 (was orders:1), FORCED past 1 failed condition(s) above" in said
    assert skipped in said
    shown = json.loads(cli("runs", "show", "orders:2", "--json").stdout)["promotions"]
    assert [(p["promoted"], p["forced"]) for p in shown] == [(False, False), (True, True)]

    # hone eval --base NAME:VERSION loads that run's tuned model as the baseline, not its bare base model
    scored = lambda *args: json.loads(cli("eval", *args, "--limit", "2", "--json").stdout.strip().splitlines()[-1])  # noqa: E731
    against_run, against_bare = scored("orders:2", "--base", "orders:1"), scored("orders:2")
    assert against_run["base_model"] == "orders:1" and against_bare["base_model"] == str(tiny_model)
    # orders:2 has orders:1's weights: the same perplexity when the baseline is that run, not the bare model's
    assert against_run["base"]["perplexity"] == pytest.approx(against_run["tuned"]["perplexity"], rel=1e-5)
    assert against_bare["base"]["perplexity"] != pytest.approx(against_bare["tuned"]["perplexity"], rel=1e-5)
