"""Device, precision and thread choices, made once per process and reported to the user."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    device: str                 # "cpu", "cuda" or "mps"
    autocast: torch.dtype | None  # dtype for autocast regions, None for none
    threads: int
    note: str                   # one line for the user: what was chosen and why
    frozen_bf16: bool = False   # frozen linear layers compute in bf16 (training/precision.py)


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run ~4x faster than fp32 on such CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_threads(requested: int | None = None) -> int:
    """Threads for torch: the request, else the cores not already busy with other work.

    On a 2-core machine with another busy process, two OpenMP threads trained 3.5-7x slower than
    one (oversubscription); an idle machine gains from all its cores.
    """
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit():
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, round(cores - busy_cores(cores) + 0.25)))


def busy_cores(cores: int, window: float = 0.25) -> float:
    """Cores in use by other processes right now, from /proc/stat over a short window.

    The load average lags by a minute: a test run that just ended would cost a whole thread.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cores * (1.0 - (idle1 - idle0) / max(1, total1 - total0))


def pick_hardware(precision: str = "auto", threads: int | None = None) -> Hardware:
    """Choose device, precision and threads, apply the process-wide torch settings, describe them."""
    n = pick_threads(threads)
    torch.set_num_threads(n)
    if torch.cuda.is_available():
        dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
            precision, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        torch.backends.cuda.matmul.allow_tf32 = True
        return Hardware("cuda", dtype, n, f"GPU {torch.cuda.get_device_name()}, autocast {dtype}")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        dtype = torch.float16 if precision in ("fp16", "bf16") else None
        return Hardware("mps", dtype, n, f"Apple GPU (mps), {'fp16 autocast' if dtype else 'fp32'}")
    if precision == "bf16":
        return Hardware("cpu", torch.bfloat16, n, f"CPU, {n} thread(s), bf16 autocast (eager bf16 "
                        "rounds away small LoRA updates; auto avoids it)")
    if precision == "auto" and cpu_has_bf16():
        # fp32 weights and activations, matmuls through oneDNN's bf16 path: ~2x the fp32 speed here,
        # and the LoRA add stays in fp32 (eager bf16 autocast kept only 33% of an early update).
        torch.set_float32_matmul_precision("medium")
        return Hardware("cpu", None, n, f"CPU, {n} thread(s), fp32 training, frozen weights in bf16",
                        frozen_bf16=True)
    torch.set_float32_matmul_precision("highest")
    return Hardware("cpu", None, n, f"CPU, {n} thread(s), fp32")


def peak_memory_mb(device: str) -> tuple[float, str]:
    """(peak memory in MB, what was measured): the GPU's peak allocation, else the process's peak RSS."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "GPU allocated"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10), "process resident"  # bytes on macOS, KiB on Linux
