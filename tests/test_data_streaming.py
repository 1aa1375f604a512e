"""Check and split stream: peak memory stays far below the size of a file of a few hundred MB."""
import json
import random
import subprocess
import sys

import pytest

MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")


def peak_rss(*args) -> int:
    """Peak resident memory (bytes) of `hone ARGS` run as a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "hone.cli", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip())


def write_big(path, megabytes: int) -> int:
    rng = random.Random(0)
    words = [f"word{i}" for i in range(3000)]
    paragraphs = [" ".join(rng.choice(words) for _ in range(600)) for _ in range(64)]
    with path.open("w", encoding="utf-8") as handle:
        i = 0
        while handle.tell() < megabytes * 2**20:
            record = {"messages": [{"role": "user", "content": f"Question {i}: {paragraphs[i % 64][:200]}"},
                                   {"role": "assistant", "content": f"Answer {i}. " + " ".join(
                                       paragraphs[(i * 7 + k) % 64] for k in range(8))}]}
            handle.write(json.dumps(record) + "\n")
            i += 1
    return path.stat().st_size


@pytest.mark.slow
def test_check_and_split_of_a_large_file_stay_in_bounded_memory(tmp_path):
    # The CLI's fixed cost (Python, numpy, and torch, which `hone` imports for its interrupt handler) is
    # ~280 MiB whatever the file; what must not happen is growth with the file. So compare a 5 MiB file
    # with a 100 MiB one: the extra peak memory must stay under a tenth of the extra size. Records of ~35 KB,
    # so what check and split may keep per record (a hash for duplicates, ~350 bytes) stays small beside that.
    small, big = write_big(tmp_path / "small.jsonl", 5), write_big(tmp_path / "big.jsonl", 100)
    peaks = {}
    for name in ("small", "big"):
        peaks[name] = (peak_rss("data", "check", str(tmp_path / f"{name}.jsonl"), "--no-tokens", "-o", str(tmp_path)),
                       peak_rss("data", "split", str(tmp_path / f"{name}.jsonl"), "-o", str(tmp_path / f"{name}-parts")))
    print(f"files {small / 2**20:.0f} and {big / 2**20:.0f} MiB; peak RSS check {peaks['small'][0] / 2**20:.0f} -> "
          f"{peaks['big'][0] / 2**20:.0f} MiB, split {peaks['small'][1] / 2**20:.0f} -> {peaks['big'][1] / 2**20:.0f} MiB")
    for step in (0, 1):
        assert peaks["big"][step] - peaks["small"][step] < (big - small) / 10
    manifest = json.loads((tmp_path / "big-parts" / "split.json").read_text())
    assert sum(s["records"] for s in manifest["splits"].values()) == manifest["records"]
