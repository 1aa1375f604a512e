"""A sweep's trials on `hone worker --sweeps` processes sharing the database: different trials at once, one per
worker; a killed worker's trial finished by the other from its run folder; no trial run twice; the test split read
once, by `hone sweep --workers`, after selection."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hone
from test_sweep import sweep_config

STARTED: list[subprocess.Popen] = []
WAIT = 150  # seconds before a test gives up on a process: a broken recovery would otherwise wait forever


class Hone:
    """`hone ARGS` in its own process on this test's hone home; its stderr lines arrive on a queue as printed."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONPATH=str(Path(hone.__file__).parents[1]), COLUMNS="200")
        self.process = subprocess.Popen([sys.executable, "-m", "hone.cli", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        STARTED.append(self.process)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)  # the process has ended

    def wait_for(self, start: str) -> str:
        """The next stderr line that starts with `start`."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line starting {start!r} from {self.process.args[3]}:\n"
                                     + "".join(self.log))
            if line.startswith(start):
                return line


@pytest.fixture(autouse=True)
def stop_processes():
    """A failing test leaves no worker polling forever."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    STARTED.clear()


def test_workers_take_different_trials_and_finish_a_killed_workers_trial(tiny_model, chat_files):
    settings = sweep_config(tiny_model, chat_files, epochs=8, save_every=2)
    sweep = Hone("sweep", "--name", "spread", "--trials", "2", "--space", "lr", "--workers", "--json",
                 "--model", settings["model"], "--objective", "sft", "--method", "lora", "--data", settings["data"],
                 "--validation", settings["validation"], "--test", settings["test"],
                 *[part for s in settings["sets"] for part in ("--set", s)])
    sweep.wait_for("hone sweep spread")  # the sweep is open to workers
    first, second = Hone("worker", "--sweeps"), Hone("worker", "--sweeps")
    taken = {first.wait_for("trial ").split()[1], second.wait_for("trial ").split()[1]}
    assert len(taken) == 2, "".join(first.log + ["-----\n"] + second.log)  # each its own trial of the sweep
    first.wait_for("  memory estimate")  # its run is set up, training starts: kill -9 it in the middle of its trial
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()

    try:  # the second worker recovers it; the sweep then finishes
        out, _ = sweep.process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:  # the killed trial stayed RUNNING: the sweep waits for it forever
        raise AssertionError(f"the sweep did not finish in {WAIT} s: no worker recovered the killed worker's "
                             "trial\n" + "".join(sweep.log + ["-----\n"] + second.log)) from None
    second.process.send_signal(signal.SIGINT)
    assert second.process.wait(timeout=WAIT) == 0, "".join(second.log)
    assert sweep.process.returncode == 0, "".join(sweep.log)
    result = json.loads(out.strip().splitlines()[-1])
    trials = {t["number"]: t for t in result["trials"]}
    from hone.sweeps.storage import load_study

    pids = {t.number: t.user_attrs["pid"] for t in load_study("spread").trials}
    killed = next(n for n, pid in pids.items() if pid == first.process.pid)
    assert trials[killed]["state"] == "fail" and not trials[killed]["error"]
    retry = next(t for t in trials.values() if t["retry_of"] == killed)
    assert retry["state"] == "complete" and pids[retry["number"]] == second.process.pid
    assert retry["params"] == trials[killed]["params"] and retry["run_dir"] == trials[killed]["run_dir"]
    # no trial repeats: three trials (the killed one, the other worker's own, the retry), each started once
    assert len(trials) == 3 and sum(t["state"] == "complete" for t in trials.values()) == 2
    started = [line.split()[1] for line in first.log + second.log if line.startswith("trial ") and "finished" not
               in line and "pruned" not in line]
    assert sorted(started) == sorted(str(n) for n in trials)
    own = next(n for n in trials if n not in (killed, retry["number"]))
    assert len({trials[own]["run_dir"], retry["run_dir"]}) == 2
    # selection over, the test split read once, by the waiting `hone sweep --workers`
    assert result["test"]["n"] == 4 and result["best_run"] in {t["run_dir"] for t in trials.values()}
    assert "scoring it once on the test split" in "".join(sweep.log)
    assert not any("test split" in line and "scoring" in line for line in second.log)
