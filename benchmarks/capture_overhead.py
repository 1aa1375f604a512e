"""What `hone serve --capture` costs an answer: latency with capture on against off, same server, interleaved.

    .venv/bin/python benchmarks/capture_overhead.py [--requests 60] [--tokens 16] [--engine auto] [--model NAME]

One `hone serve --engine ENGINE --capture --capture-model on` on loopback offers the same base model under
three names, `on` (captured), `off` and `control` (not), so all share one process, one engine and one
loaded model. The official openai client sends each demo `orders` test chat (greedy, max_tokens fixed) to
the three, one at a time, rotating which goes first, so that load on the machine and llama.cpp's reuse of
a just-seen prompt hit all alike; `control` against `off` (both uncaptured) is the run's noise floor. The
prompts carry an e-mail address and a phone number, so every capture is redacted. Latency is the client's,
from send to the whole answer. Afterwards the service database must hold `requests` captures (plus the
warm-up's), all of `on`, none dropped. Then, in this process: what the request path spends per capture
(build the record, queue it), and how many captures per second the writer thread redacts and commits.
The last line is one JSON object: `capture_overhead_p50` is on's p50 latency over off's (target < 1.05),
`capture_overhead_paired` the geometric mean over chats of on's latency over off's; `control_p50` and
`control_paired` the same for control over off.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_inference import conversations  # noqa: E402 - the same prompts as the engine benchmarks
from serve_load import HoneServer, percentile  # noqa: E402 - the server every serve benchmark starts

TARGETS = ("on", "off", "control")   # control: a second uncaptured name, the run's noise floor (off vs off)
PERSONAL = " Contact: jane.doe@example.com, +44 20 7946 0958."


def request_path_cost(home: Path, n: int = 2000) -> dict:
    """In this process: microseconds the request path spends per capture (build the record, queue it), and
    captures per second the writer thread redacts and commits to SQLite."""
    from hone.monitor.traffic import Exchange
    from hone.serve.capture import CaptureWriter
    from hone.serve.settings import ServeSettings

    chat = conversations(1)[0]
    chat = [*chat[:-1], {**chat[-1], "content": chat[-1]["content"] + PERSONAL}]
    writer = CaptureWriter(ServeSettings(db=f"sqlite:///{home / 'writer.db'}", capture=True, capture_queue=n + 1))
    writer._thread = object()   # type: ignore[assignment]  # hold the writer: time the request path alone
    started = time.perf_counter()
    for i in range(n):
        writer.submit(Exchange(id=f"chatcmpl-{i}", org="bench", model="on", served="on", run_dir=None, kind="chat",
                               messages=chat,
                               answers=[{"text": '{"quantity": 3}', "finish_reason": "stop", "tokens": 9}],
                               latency_ms=1.0, prompt_tokens=60, completion_tokens=9, max_tokens=16))
    submit_us = (time.perf_counter() - started) / n * 1e6
    writer._thread = None
    started = time.perf_counter()
    writer.start()
    writer.close()
    return {"submit_us": round(submit_us, 2), "writer_captures_per_s": round(n / (time.perf_counter() - started)),
            "written": writer.written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="per target")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--engine", default="auto", help="hone serve --engine (auto: llama.cpp when installed)")
    args = parser.parse_args()

    from openai import OpenAI

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = HoneServer(args.engine, home, *(a for t in TARGETS for a in ("--base-model", f"{t}={args.model}")),
                            "--capture", "--capture-model", "on")
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=300)
            chats = conversations(args.requests)
            for target in TARGETS:   # warm-up: the first request loads the model and the tokenizer
                client.chat.completions.create(model=target, messages=chats[0], max_tokens=2, temperature=0)
            latency: dict[str, list[float]] = {t: [] for t in TARGETS}
            for i, chat in enumerate(chats):
                chat = [*chat[:-1], {**chat[-1], "content": chat[-1]["content"] + PERSONAL}]
                for target in TARGETS[i % 3:] + TARGETS[:i % 3]:   # each target first, second, third alike
                    started = time.perf_counter()
                    client.chat.completions.create(model=target, messages=chat, max_tokens=args.tokens, temperature=0)
                    latency[target].append((time.perf_counter() - started) * 1000)
        finally:
            server.stop()
        from hone.monitor.traffic import read_exchanges

        path_cost = request_path_cost(home)

        stored = read_exchanges(url=f"sqlite:///{home / 'serve.db'}")
        log = (home / "serve.log").read_text()

    on, off = latency["on"], latency["off"]
    rows = {t: {"p50_ms": round(statistics.median(v), 1), "p95_ms": round(percentile(v, 0.95), 1),
                "mean_ms": round(statistics.fmean(v), 1)} for t, v in latency.items()}
    for target, row in rows.items():
        print(f"{target:>4}: p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms  mean {row['mean_ms']} ms "
              f"({len(latency[target])} requests)")
    captured = [e for e in stored if e.model == "on"]
    sent = [e for e in captured if "Contact:" in e.prompt]   # the warm-up request carries no personal data
    redacted = len(sent) == args.requests and all(
        "[EMAIL]" in e.prompt and "[PHONE]" in e.prompt and "jane.doe" not in e.prompt for e in sent)
    print(f"captures stored: {len(stored)} ({len(captured)} of on, warm-up included); all redacted: {redacted}; "
          f"dropped warnings in the log: {log.count('capture queue full')}")
    print(f"request path per capture: {path_cost['submit_us']} us; writer thread: "
          f"{path_cost['writer_captures_per_s']} captures/s redacted and committed ({path_cost['written']} written)")
    # chat i went to the three targets back to back: they share the machine's load of that moment. A later
    # one can be faster (llama.cpp reuses the cached prompt prefix), and the order rotates, so the geometric
    # mean of the per-chat ratios cancels that order effect (a median of them does not: 0.76 once, with
    # p50s equal)
    paired = round(math.exp(statistics.fmean(math.log(a / b) for a, b in zip(on, off))), 4)
    noise = round(math.exp(statistics.fmean(math.log(a / b) for a, b in zip(latency["control"], off))), 4)
    print(f"paired ratio (geometric mean per request of on/off): {paired}; the same for control/off, both "
          f"uncaptured (the noise floor): {noise}")
    print(json.dumps({**path_cost, "capture_overhead_paired": paired, "control_paired": noise,
                      "control_p50": round(statistics.median(latency["control"]) / statistics.median(off), 4),
                      "capture_overhead_p50": round(statistics.median(on) / statistics.median(off), 4),
                      "capture_overhead_mean": round(statistics.fmean(on) / statistics.fmean(off), 4),
                      "requests": args.requests, "tokens": args.tokens, "model": args.model, "engine": args.engine,
                      "rows": rows,
                      "captured": len(captured), "uncaptured_stored": len(stored) - len(captured),
                      "redacted": redacted}))


if __name__ == "__main__":
    main()
