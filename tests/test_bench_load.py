"""The serve benchmarks' one client loop (benchmarks/serve_load.py): closed-loop clients, every request once,
as many in flight as there are clients; an in-process engine asked from as many threads, or one at a time."""
from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_load import closed_loop, thread_asker  # noqa: E402


def test_closed_loop_asks_every_request_once_with_as_many_in_flight_as_clients():
    asked, in_flight, most = [], [0], [0]

    async def ask(i, started):
        asked.append(i)
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0)   # yield: the other clients send theirs
        in_flight[0] -= 1
        return 0.01, i % 3

    results = asyncio.run(closed_loop(ask, clients=4, requests=10))
    assert sorted(asked) == list(range(10))
    assert most[0] == 4
    assert len(results) == 10 and sum(r["tokens"] for r in results) == sum(i % 3 for i in range(10))
    assert all(r["latency"] >= 0 and r["ttft"] == 0.01 for r in results)


def test_thread_asker_runs_all_clients_at_once_or_one_at_a_time_when_serial():
    clients = 16
    meeting = threading.Barrier(clients, timeout=30)   # passes only when all 16 requests run at once
    running, most, lock = [0], [0], threading.Lock()

    def together(i, started):
        meeting.wait()
        return None, 1

    def one_at_a_time(i, started):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.001)
        with lock:
            running[0] -= 1
        return None, 2

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = asyncio.run(closed_loop(thread_asker(together, pool, serial=False), clients, clients))
        assert len(results) == clients and not meeting.broken
        results = asyncio.run(closed_loop(thread_asker(one_at_a_time, pool, serial=True), clients, 2 * clients))
        assert len(results) == 2 * clients and most[0] == 1
