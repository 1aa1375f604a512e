"""The transformers engine's weight dtype: one table, WEIGHTS, per kind of served model and device.

`hone serve --weights auto|fp32|bf16|fp16` (HONE_SERVE_WEIGHTS). `auto` takes each case's measured choice
for the device; fp32, bf16 and fp16 are honoured where the case allows them and refused in one line where
it does not (a merged adapter in bf16), never silently changed. The figures are benchmarks/engine_precision.py's
on the demo's tuned LoRA run (docs/serve_inference.md, "Weights in bf16 or fp16").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hone.errors import UserError

CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class WeightsCase:
    name: str
    what: str                # which served models, in the user's words
    cpu_bf16: str            # auto's choice on a CPU with native bf16 (AVX-512 BF16 or AMX: hone.hardware)
    cpu: str                 # auto's choice on any other CPU (and Apple's mps)
    cuda: str                # auto's choice on a CUDA GPU
    why: str                 # the measurement behind the choices
    refused: tuple[tuple[str, str], ...] = ()   # (dtype, why) pairs --weights may not ask for

    def refusal(self, dtype: str) -> str | None:
        return dict(self.refused).get(dtype)


# benchmarks/engine_precision.py on the demo's tuned LoRA run (json_match 0.708 in fp32, 120 test chats) and the
# base (24 chats), 1 thread, this 2-core CPU with AVX-512 BF16 (load average 5-18): bf16 weights ran 1.79x fp32
# on one stream and 1.88x at 16 rows (the base); fp16 1.0x and 0.28x (no fast fp16 matmul here). fp32 stays auto's
# choice on CPUs: bf16 changed answers that fp32 gives and `hone eval` scored. Nothing was measured on a GPU:
# the cuda column is the field's practice (bf16 where no small delta is rounded into the weights).
WEIGHTS: dict[str, WeightsCase] = {c.name: c for c in (
    WeightsCase("shared", "a base model and the LoRA/DoRA adapters served unmerged on it (adapters stay fp32)",
                cpu_bf16="fp32", cpu="fp32", cuda="bf16",
                why="bf16 base, fp32 adapter: json_match 0.700 against 0.708 (-0.008, interval [-0.025, 0]), "
                    "98.3% of answers identical, 1.66x fp32's tokens/s on one stream, 1.81x at 16 rows; base "
                    "model: 50% of 59-token answers identical; fp16: 100% identical but 0.43x at 16 rows"),
    WeightsCase("merged", "an adapter merged in fp32 into its own copy of the base (qlora, ia3)",
                cpu_bf16="fp32", cpu="fp32", cuda="fp16",
                why="merged then cast: bf16 json_match 0.700 (-0.008), 95.8% identical (unmerged bf16: 98.3%); "
                    "fp16: 100% identical (0.29x fp32's tokens/s at 16 rows on this CPU; a GPU's fp16 is fast)",
                refused=(("bf16", "bf16 keeps a merged adapter delta with relative error 0.64 (field notes §7) and "
                          "changed 4.2% of the demo run's answers merged against 1.7% unmerged"),)),
    WeightsCase("whole", "a model of its own: full fine-tune, freeze, bitfit, bottleneck adapters, prompt/prefix "
                "tuning", cpu_bf16="fp32", cpu="fp32", cuda="bf16",
                why="not measured (no full fine-tune of the demo was made): as a base model, whose weights hold no "
                    "small delta for bf16 to round away"),
)}


def check_weights(choice: str) -> str:
    """`choice` when it is one of CHOICES; else a one-line refusal naming the setting."""
    from hone.errors import ConfigError

    if choice not in CHOICES:
        raise ConfigError(f"--weights {choice} (HONE_SERVE_WEIGHTS): choose one of {', '.join(CHOICES)}",
                          field="weights")
    return choice


def weights_case(folder: Path | None, shared: bool = False) -> str:
    """Which row of WEIGHTS the model loaded from `folder` is (None: a base model; `shared`: an adapter
    served unmerged on its base, serve.engine.is_shared_adapter)."""
    if folder is None or shared:
        return "shared"
    from hone.methods.artifact import read_method

    info = read_method(folder)
    merges = info["saved"] == "peft" and info["method"] in ("lora", "dora", "qlora", "ia3")
    return "merged" if merges else "whole"


def device_kind(device: str) -> str:
    """The WEIGHTS column for `device`: 'cuda', 'cpu_bf16' or 'cpu'."""
    from hone.hardware import cpu_has_bf16

    if device == "cuda":
        return "cuda"
    return "cpu_bf16" if device == "cpu" and cpu_has_bf16() else "cpu"


def pick_weights(choice: str, case: str, device: str) -> str:
    """The dtype ('fp32', 'bf16', 'fp16') `case`'s weights load in under `choice` on `device`; a refused
    combination raises a UserError naming the setting."""
    row = WEIGHTS[case]
    if choice == "auto":
        return getattr(row, device_kind(device))
    if why := row.refusal(choice):
        allowed = ", ".join(d for d in CHOICES if not row.refusal(d))
        raise UserError(f"--weights {choice} (HONE_SERVE_WEIGHTS) cannot serve {row.what}: {why}; "
                        f"choose {allowed}")
    return choice
