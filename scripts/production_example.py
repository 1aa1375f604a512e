"""docs/production.md's worked example: a served model meets a shifted stream, users correct it, and its next
version replaces it only after `hone promote` proves it. Every number it prints is measured here.

    serve RUN as NAME@production (hone serve --capture --registry-model NAME=acme) -> English orders, then
    Spanish ones (scripts/shifted_orders.py), through the official openai client -> hone monitor --json on each
    phase (drift or none) -> POST /v1/feedback: wrong answers rated bad with the correct answer, right ones good
    -> hone data from-traffic --include-good --holdout (a share of the corrections held out) ->
    hone train --continue NAME@production -> hone promote (its new slice: the held-out corrections) -> the same
    server, no restart, answers Spanish orders nobody sent before.

    python3 scripts/production_example.py RUN OUT_DIR [--english 24] [--spanish 80] [--steps 16] [--limit 40]

RUN is a finished demo run (hone demo --output RUN). The corrections come from the generator's true answers,
standing in for what a user would type.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shifted_orders import shifted_orders  # noqa: E402

from hone.evaluation.metrics import json_match  # noqa: E402
from hone.objectives.demo import demo_data  # noqa: E402
from hone.registry import get_run, set_tag  # noqa: E402
from hone.registry.indexing import sync_run  # noqa: E402
from hone.registry.store import find_by_path  # noqa: E402

HONE = [sys.executable, "-m", "hone.cli"]


def hone_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    print("$ hone " + " ".join(args), flush=True)
    done = subprocess.run([*HONE, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        sys.exit(f"hone {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def serve(name: str, out: Path) -> tuple[subprocess.Popen, str, str, str]:
    """`hone serve --capture` offering NAME@... to org acme, on a free port; (process, base URL, key, db URL)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = f"sqlite:///{out / 'serve.db'}"
    log = (out / "serve.log").open("w")
    proc = subprocess.Popen([*HONE, "serve", "--port", str(port), "--db", db, "--workers", "0",
                             "--engine", "transformers", "--capture", "--registry-model", f"{name}=acme"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"hone serve did not start:\n{(out / 'serve.log').read_text()}")
            time.sleep(0.5)
    key = hone_cli("keys", "create", "--org", "acme", "--db", db).stdout.strip()
    return proc, f"http://127.0.0.1:{port}/v1", key, db


def ask_all(client, model: str, examples: list[dict]) -> list[tuple[dict, str, float, str]]:
    """Each example's prompt sent as a chat request, 8 at a time (the engine batches them);
    (example, served answer, json_match against the truth, the answer's id)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(example: dict) -> tuple[dict, str, float, str]:
        answer = client.chat.completions.create(model=model, messages=example["messages"][:-1], temperature=0,
                                                max_tokens=48)   # the longest JSON answer is ~35 tokens
        text = answer.choices[0].message.content or ""
        return example, text, json_match(text, example["messages"][-1]["content"]), answer.id

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, examples))


def share(results: list) -> str:
    return f"{sum(r[2] for r in results):.0f}/{len(results)} right ({sum(r[2] for r in results) / len(results):.0%})"


def monitor(model: str, db: str, since: float) -> dict:
    """hone monitor --json on the traffic since `since`: the drift figures."""
    from datetime import datetime, timezone

    done = hone_cli("monitor", model, "--json", "--db", db, "--since",
                    datetime.fromtimestamp(since, timezone.utc).isoformat())
    return json.loads(done.stdout.strip().splitlines()[-1])


def drift_line(report: dict) -> str:
    drift = report.get("drift") or {}
    if "p_value" not in drift:
        return f"drift not measured ({drift.get('skipped', 'no drift figures')})"
    return (f"{drift['inputs']} inputs vs {drift['training_examples']} training inputs: MMD2 {drift['mmd2']:.4f}, "
            f"p = {drift['p_value']:.3f}, {'DRIFT' if drift['drifted'] else 'no drift'}; alarms: "
            f"{', '.join(str(a['name']) for a in report.get('alarms') or []) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--english", type=int, default=24, help="English requests (monitor needs 20 distinct inputs)")
    parser.add_argument("--spanish", type=int, default=80, help="Spanish requests, all rated")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of the corrections held out")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of the continued run")
    parser.add_argument("--limit", type=int, default=40, help="original-test items hone promote scores")
    parser.add_argument("--after", type=int, default=16, help="requests of each language after the promotion")
    args = parser.parse_args()
    from openai import OpenAI

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = shifted_orders(args.out / "data", n_train=args.spanish, n_test=args.after)
    spanish = rows(data["train"])   # the stream users send; new-test.jsonl: Spanish orders sent only at the end
    unseen_spanish = rows(data["test"])
    english = rows(demo_data() / "test.jsonl")

    # 1. The demo's tuned model is the one in production.
    row = find_by_path(args.run)
    if row is None:
        sync_run(args.run.resolve(), json.loads((args.run / "run.json").read_text(encoding="utf-8")))
        row = find_by_path(args.run)
    assert row is not None
    set_tag(row.ref, "production")
    name = row.name
    model = f"{name}@production"
    print(f"1. {model} -> {row.ref} ({row.path})")

    # 2. Serve it with capture on; English orders, then a stream of Spanish ones. Monitor each phase.
    proc, url, key, db = serve(name, args.out)
    try:
        client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
        t_english = time.time()
        before_en = ask_all(client, model, english[: args.english])
        seen_en = monitor(model, db, t_english)
        t_spanish = time.time()
        before_es = ask_all(client, model, spanish)
        seen_es = monitor(model, db, t_spanish)
        print(f"2. served {model}: English orders {share(before_en)}; then Spanish orders {share(before_es)}")
        print(f"   hone monitor, English phase: {drift_line(seen_en)}")
        print(f"   hone monitor, Spanish phase: {drift_line(seen_es)}")

        # 3. Users rate the Spanish answers: wrong ones bad with the right answer, right ones good.
        for example, _text, right, answer_id in before_es:
            body = {"id": answer_id, "rating": "good"} if right else \
                {"id": answer_id, "rating": "bad", "correction": example["messages"][-1]["content"]}
            client.post("/feedback", body=body, cast_to=object)
        wrong = sum(not r[2] for r in before_es)
        print(f"3. POST /v1/feedback: {wrong} Spanish answers rated bad with a correction, "
              f"{len(before_es) - wrong} rated good")

        # 4. The next dataset: corrections and good answers, a share of the corrections held out.
        next_data = args.out / "next.jsonl"
        made = hone_cli("data", "from-traffic", model, "--output", str(next_data), "--include-good", "--holdout",
                        str(args.holdout), "--db", db, "--json")
        made = json.loads(made.stdout.strip().splitlines()[-1])
        dropped = ", ".join(f"{len(ids)} {reason}" for reason, ids in made["dropped"].items()) or "none"
        print(f"4. hone data from-traffic: {made['examples']} training examples ({made['corrected']} corrected, "
              f"{made['good']} rated good), {made['held_out']} corrections held out in {made['holdout']}; "
              f"left out: {dropped}")

        # 5. The next version, from the served one's weights, replaying its training data, the forgetting gate on.
        trained = hone_cli("train", "--continue", model, "--data", str(next_data), "--max-steps", str(args.steps),
                           "--output", str(args.out / "next"), "--json", check=False)
        if trained.returncode not in (0, 3):
            sys.exit(f"hone train failed:\n{trained.stderr[-3000:]}")
        result = json.loads(trained.stdout.strip().splitlines()[-1])
        forgetting = result["forgetting"] or {}
        candidate = find_by_path(args.out / "next")
        assert candidate is not None
        print(f"5. {candidate.ref}: {result['steps']} steps in {result['train_seconds']:.0f} s; original test "
              f"{result['base_score']:.1%} (parent) -> {result['tuned_score']:.1%}; forgetting probe drop "
              f"{forgetting.get('drop', float('nan')):+.1f} points (gate {forgetting.get('gate', '?')}, "
              f"{'passed' if forgetting.get('passed') else 'FAILED'})")

        # 6. Champion against challenger on the original test and the held-out corrections; no --new-slice.
        promoted = hone_cli("promote", candidate.ref, "--over", "production", "--limit", str(args.limit), "--json",
                            check=False)
        decision = json.loads(promoted.stdout.strip().splitlines()[-1])
        print(f"6. hone promote {candidate.ref}: {'promoted' if decision['promoted'] else 'refused'} "
              f"(new slice: {decision['figures']['new_slice']['file']})")
        for condition in decision["conditions"]:
            print(f"   {'pass' if condition['passed'] else 'n/a ' if condition['passed'] is None else 'FAIL'}  "
                  f"{condition['line']}")

        # 7. The same server, no restart: NAME@production on Spanish orders nobody sent before, and English ones.
        after_es = ask_all(client, model, unseen_spanish)
        after_en = ask_all(client, model, english[: args.after])
        print(f"7. served {model} now ({get_run(model).ref}): {len(after_es)} Spanish orders never sent or trained "
              f"on {share(after_es)}; English orders {share(after_en)} (before: {share(before_en[: args.after])} "
              "on the same English ones)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rate = lambda results: sum(r[2] for r in results) / len(results)  # noqa: E731
    summary = {"before": {"english": rate(before_en), "spanish": rate(before_es)},
               "monitor": {"english": seen_en.get("drift"), "spanish": seen_es.get("drift")},
               "from_traffic": made, "after": {"english": rate(after_en), "unseen_spanish": rate(after_es)},
               "train": {k: result[k] for k in ("steps", "train_seconds", "base_score", "tuned_score", "forgetting")},
               "promotion": decision, "seconds": round(time.monotonic() - started)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(f"total {summary['seconds']} s; {args.out / 'summary.json'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
