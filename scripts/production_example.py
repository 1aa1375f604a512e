"""docs/production.md's worked example: a served model meets a shifted stream, learns the corrections, and its
next version replaces it only after `hone promote` proves it. Every number it prints is measured here.

    serve RUN as NAME@production (hone serve --registry-model NAME=acme) -> traffic through the official openai
    client: English orders, then Spanish ones (scripts/shifted_orders.py) -> served accuracy per phase (the
    shift) -> corrections for the answers that were wrong -> hone train --continue NAME@production ->
    hone promote NAME:N --over production --new-slice (held-out Spanish orders) -> the same server, no restart,
    answers the Spanish orders again.

    python3 scripts/production_example.py RUN OUT_DIR [--requests 20] [--steps 16] [--limit 60]

RUN is a finished demo run (hone demo --output RUN). The corrections are made here from the generator's true
answers, standing in for `POST /v1/feedback` + `hone data from-traffic` (docs/production.md says which).
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


def serve(name: str, out: Path) -> tuple[subprocess.Popen, str, str]:
    """`hone serve` offering NAME@... to org acme, on a free port; (process, base URL, key)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = f"sqlite:///{out / 'serve.db'}"
    log = (out / "serve.log").open("w")
    proc = subprocess.Popen([*HONE, "serve", "--port", str(port), "--db", db, "--workers", "0",
                             "--engine", "transformers", "--registry-model", f"{name}=acme"],
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
    return proc, f"http://127.0.0.1:{port}/v1", key


def ask_all(client, model: str, examples: list[dict]) -> list[tuple[dict, str, float]]:
    """Each example's prompt sent as a chat request, 8 at a time (the engine batches them);
    (example, served answer, json_match against the truth)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(example: dict) -> tuple[dict, str, float]:
        answer = client.chat.completions.create(model=model, messages=example["messages"][:-1], temperature=0,
                                                max_tokens=48)   # the longest JSON answer is ~35 tokens
        text = answer.choices[0].message.content or ""
        return example, text, json_match(text, example["messages"][-1]["content"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, examples))


def share(results: list) -> str:
    return f"{sum(r[2] for r in results):.0f}/{len(results)} right ({sum(r[2] for r in results) / len(results):.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=16, help="requests per phase")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of the continued run")
    parser.add_argument("--limit", type=int, default=60, help="items of each set hone promote scores")
    args = parser.parse_args()
    from openai import OpenAI

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = shifted_orders(args.out / "data", n_train=120, n_test=40)
    traffic = rows(data["train"])   # what users send; the held-out slice (new-test) is never served here
    english = rows(demo_data() / "test.jsonl")[: args.requests]

    # 1. The demo's tuned model is the one in production.
    row = find_by_path(args.run)
    if row is None:
        sys.exit(f"{args.run} is not a registered run (hone runs list imports run folders)")
    set_tag(row.ref, "production")
    name = row.name
    print(f"1. {name}@production -> {row.ref} ({row.path})")

    # 2. Serve it, and send a stream whose distribution shifts half way.
    proc, url, key = serve(name, args.out)
    try:
        client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
        before_en = ask_all(client, f"{name}@production", english)
        before_es = ask_all(client, f"{name}@production", traffic[: args.requests])
        print(f"2. served {name}@production: English orders {share(before_en)}; then Spanish orders "
              f"{share(before_es)}")

        # 3. Corrections: every Spanish answer that was wrong, with the right one (the user's correction).
        corrections = [example for example, _text, right in before_es if not right]
        extra = traffic[args.requests:]   # later traffic, corrected the same way
        corrections_file = args.out / "corrections.jsonl"
        corrections_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corrections + extra),
                                    encoding="utf-8")
        print(f"3. corrections: {len(corrections)} of the {len(before_es)} served Spanish answers were wrong; "
              f"{len(corrections) + len(extra)} corrected examples in {corrections_file}")

        # 4. The next version, from the served one's weights, replaying its training data, the forgetting gate on.
        trained = hone_cli("train", "--continue", f"{name}@production", "--data", str(corrections_file),
                           "--max-steps", str(args.steps), "--output", str(args.out / "next"), "--json", check=False)
        if trained.returncode not in (0, 3):
            sys.exit(f"hone train failed:\n{trained.stderr[-3000:]}")
        result = json.loads(trained.stdout.strip().splitlines()[-1])
        forgetting = result["forgetting"] or {}
        candidate = find_by_path(args.out / "next")
        assert candidate is not None
        print(f"4. {candidate.ref}: {result['steps']} steps in {result['train_seconds']:.0f} s; original test "
              f"{result['base_score']:.1%} (parent) -> {result['tuned_score']:.1%}; forgetting probe drop "
              f"{forgetting.get('drop', float('nan')):+.1f} points (gate {forgetting.get('gate', '?')}, "
              f"{'passed' if forgetting.get('passed') else 'FAILED'})")

        # 5. Champion against challenger; the tag moves only on proof.
        promoted = hone_cli("promote", candidate.ref, "--over", "production", "--new-slice", str(data["test"]),
                            "--limit", str(args.limit), "--json", check=False)
        decision = json.loads(promoted.stdout.strip().splitlines()[-1])
        print(f"5. hone promote {candidate.ref}: {'promoted' if decision['promoted'] else 'refused'}")
        for condition in decision["conditions"]:
            print(f"   {'pass' if condition['passed'] else 'n/a ' if condition['passed'] is None else 'FAIL'}  "
                  f"{condition['line']}")

        # 6. The same server, no restart: what does NAME@production answer now?
        after_es = ask_all(client, f"{name}@production", traffic[: args.requests])
        after_en = ask_all(client, f"{name}@production", english)
        print(f"6. served {name}@production now ({get_run(f'{name}@production').ref}): Spanish orders "
              f"{share(after_es)}, English orders {share(after_en)}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    summary = {"before": {"english": sum(r[2] for r in before_en) / len(before_en),
                          "spanish": sum(r[2] for r in before_es) / len(before_es)},
               "after": {"english": sum(r[2] for r in after_en) / len(after_en),
                         "spanish": sum(r[2] for r in after_es) / len(after_es)},
               "train": {k: result[k] for k in ("steps", "train_seconds", "base_score", "tuned_score", "forgetting")},
               "promotion": decision, "seconds": round(time.monotonic() - started)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"total {summary['seconds']} s; {args.out / 'summary.json'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
