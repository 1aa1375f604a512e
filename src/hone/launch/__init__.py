"""Launching `hone train` as several processes: torchrun (default) or accelerate with a shipped config.

Configs (pass a name to `hone train --nproc N --launcher accelerate --accelerate-config NAME`, or a path):
  ddp              data parallel; on CPU hosts hone sets ACCELERATE_USE_CPU=1 so that accelerate starts N
                   processes on gloo (a MULTI_CPU config, or `--cpu`, silently starts ONE: field notes §9)
  fsdp2            FSDP2 sharding: hone's own loop (sft, pretrain, mixture) shards weights, gradients and
                   optimizer state with torch's fully_shard (training/sharding.py; on CPU too, gloo), as
                   `train.sharding: fsdp2` does under torchrun; the Trainer-driven objectives get
                   accelerate's FSDP2 (GPUs only)
  deepspeed-zero2  DeepSpeed ZeRO-2, for the Trainer-driven objectives on GPUs (pip install 'hone[deepspeed]')
  deepspeed-zero3  DeepSpeed ZeRO-3, likewise
hone's own loop refuses FSDP1 and DeepSpeed configs in one line rather than silently training unsharded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hone.errors import ConfigError

CONFIGS = {"ddp": "ddp.yaml", "fsdp2": "fsdp2.yaml", "deepspeed-zero2": "deepspeed_zero2.yaml",
           "deepspeed-zero3": "deepspeed_zero3.yaml"}


def accelerate_config(name_or_path: str) -> Path:
    if name_or_path in CONFIGS:
        return Path(__file__).parent / CONFIGS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no accelerate config {name_or_path!r}: use one of {', '.join(CONFIGS)} or a YAML file",
                          field="--accelerate-config")
    return path


def launch_command(nproc: int, argv: list[str], launcher: str = "torchrun",
                   config: str = "ddp") -> tuple[list[str], dict]:
    """(command, environment) that runs `hone <argv>` as `nproc` processes."""
    import torch

    env = dict(os.environ)
    if launcher == "torchrun":
        return [sys.executable, "-m", "hone.launch.quiet", "torchrun", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "hone.cli", *argv], env
    if launcher != "accelerate":
        raise ConfigError(f"unknown launcher {launcher!r}: torchrun or accelerate", field="--launcher")
    path = accelerate_config(config)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    return [sys.executable, "-m", "hone.launch.quiet", "accelerate", "--config_file", str(path),
            "--num_processes", str(nproc), "-m", "hone.cli", *argv], env


def launcher_name() -> str | None:
    """Which launcher started this process: accelerate (it sets ACCELERATE_* variables) or torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    return "accelerate" if any(k.startswith("ACCELERATE_") for k in os.environ) else "torchrun"


def sharding_requested() -> str | None:
    """The sharding an accelerate launch asked for (FSDP or DeepSpeed), from the variables it sets."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return f"FSDP{os.environ.get('FSDP_VERSION', '1')}"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "DeepSpeed"
    return None


def check_launch(objective: str, own_loop: bool, train_sharding: str = "none") -> None:
    """hone's loop shards with FSDP2 (training/sharding.py) or replicates; FSDP1 and DeepSpeed it refuses up front,
    and `train.sharding` outside it (the Trainer-driven objectives take sharding from accelerate's config)."""
    if train_sharding != "none" and not own_loop:
        raise ConfigError(f"train.sharding {train_sharding} applies to hone's own loop (sft, pretrain, mixture); "
                          f"objective {objective} trains through the Trainer: set train.sharding none (on GPUs, "
                          "launch it with --accelerate-config fsdp2)", field="train.sharding")
    sharding = sharding_requested()
    if sharding and sharding != "FSDP2" and own_loop:
        raise ConfigError(f"objective {objective} trains in hone's own loop, which shards with FSDP2 only: launch it "
                          f"with --accelerate-config fsdp2 (or ddp) instead of {sharding} ({sharding} applies to the "
                          "Trainer-driven objectives: classify, ner, dpo, orpo, simpo, reward, grpo)",
                          field="--accelerate-config")
    if sharding and not own_loop and not _has_gpu():
        # Measured here (2 CPU processes, dpo): the ZeRO-2 config trained as plain DDP without a word, ZeRO-3
        # crashed in TRL's parameter gathering, and accelerate's FSDP on CPU fails or becomes DDP (field notes §9).
        raise ConfigError(f"objective {objective} trains through the Trainer, whose {sharding} does not run on a CPU "
                          "host (it silently falls back to data parallel or crashes): launch it with "
                          "--accelerate-config ddp here, or on GPUs", field="--accelerate-config")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
