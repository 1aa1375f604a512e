"""One decode step of a batch whose rows use many LoRA adapters: peft's mixed-batch loop against the stacked
LoRA step (hone.serve.engines.multilora), against the same step on a plain model (what a merged adapter costs).

    .venv/bin/python benchmarks/multilora_step.py [--adapters 20] [--rows 16] [--steps 16] [--rounds 5]
                                                  [--rank 16] [--threads 1] [--device auto]

One process, one base (the embedded SmolLM2-135M-Instruct, or --model), `--adapters` LoRA adapters of hone's
default shape (r16, alpha 32, all-linear: 210 LoRA linears) with seeded random weights, loaded onto one
PeftModel as `hone serve` loads them. Per target, a batch of `--rows` rows (row i uses adapter i mod N) is
prefilled with the same 32-token prompts (untimed), then `--steps` decode steps with a KV cache are timed;
the targets alternate within each round and the median over rounds is printed:
  merged        a plain model of the base's weights: no LoRA at all (a merged adapter runs at this speed)
  peft_mixed    PeftModel(adapter_names=...): peft's per-adapter loop in every LoRA linear (before)
  stacked       the same rows through multilora's stacked step (after)
  peft_one      every row through adapter 0, peft's single-adapter path (set_adapter)
  stacked_one   every row through adapter 0, the stacked step
Also checked: the stacked step's logits equal peft's for the mixed batch (max |diff| printed).
The last line is one JSON object with ms per step and the ratios. Read ratios within one run (field notes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def build(model_name: str, adapters: int, rank: int, device: str):
    import torch
    from peft import LoraConfig, get_peft_model

    from hone.models.load import load_causal_lm
    from hone.serve.engines import multilora

    plain = load_causal_lm(model_name, device)
    shared = None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    for i in range(adapters):
        torch.manual_seed(i)
        if shared is None:
            shared = get_peft_model(load_causal_lm(model_name, device), config, adapter_name=f"adapter{i}")
        else:
            shared.add_adapter(f"adapter{i}", config)
        with torch.no_grad():   # small B, as trained adapters have: the answers stay the model's
            for name, p in shared.named_parameters():
                if f"lora_B.adapter{i}." in name:
                    p.mul_(0.01)
    shared.eval()
    started = time.perf_counter()
    multilora.sync(shared)
    return plain, shared, time.perf_counter() - started


def decode(model, rows: int, steps: int, device: str, context=None, **extra) -> tuple:
    """Prefill `rows` prompts, then time `steps` greedy decode steps; seconds per step and the first step's logits."""
    from contextlib import nullcontext

    import torch
    from transformers import DynamicCache

    ids = torch.randint(3, 40000, (rows, 32), generator=torch.Generator().manual_seed(0)).to(device)
    cache = DynamicCache()
    with torch.inference_mode(), context or nullcontext():
        logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **extra).logits[:, -1]
        first = None
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)
            logits = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1, **extra).logits[:, -1]
            if first is None:
                first = logits.float().cpu()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - began) / steps, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="a catalogue name or folder (default: the embedded model)")
    args = parser.parse_args()

    from hone.hardware import pick_hardware
    from hone.models.catalogue import DEFAULT_MODEL
    from hone.serve.engines import multilora
    from hone.serve.generation import adapter_scope

    device = pick_hardware("auto", args.threads).device if args.device == "auto" else args.device
    plain, shared, sync_s = build(args.model or DEFAULT_MODEL, args.adapters, args.rank, device)
    print(f"{args.adapters} adapters r{args.rank} all-linear on {device}; stacking them took {sync_s:.2f} s "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    names = [f"adapter{i % args.adapters}" for i in range(args.rows)]
    one = ["adapter0"] * args.rows
    targets = {
        "merged": lambda: decode(plain, args.rows, args.steps, device),
        "peft_mixed": lambda: decode(shared, args.rows, args.steps, device, adapter_names=names),
        "stacked": lambda: decode(shared, args.rows, args.steps, device, multilora.stacked_rows(shared, names)),
        "peft_one": lambda: decode(shared, args.rows, args.steps, device, adapter_scope(shared, "adapter0")),
        "stacked_one": lambda: decode(shared, args.rows, args.steps, device, multilora.stacked_rows(shared, one)),
    }
    times: dict[str, list[float]] = {t: [] for t in targets}
    logits = {}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        order = list(targets) if r % 2 == 0 else list(reversed(targets))   # alternate, and flip the order
        for target in order:
            seconds, first = targets[target]()
            times[target].append(seconds)
            logits[target] = first
        print(f"round {r + 1}: " + ", ".join(f"{t} {times[t][-1] * 1000:.1f} ms" for t in targets)
              + f" (load {loads[-1]:.2f})", flush=True)
    diff = float((logits["stacked"] - logits["peft_mixed"]).abs().max())
    diff_one = float((logits["stacked_one"] - logits["peft_one"]).abs().max())
    lora = float((logits["stacked"] - logits["merged"]).abs().max())   # what the adapters change: must be > diff
    ms = {t: round(statistics.median(v) * 1000, 2) for t, v in times.items()}
    print(f"median ms per decode step of {args.rows} rows over {args.rounds} rounds; "
          f"load average {min(loads):.2f}-{max(loads):.2f}")
    for t, v in ms.items():
        print(f"  {t:12} {v:8.2f} ms   {ms['merged'] / v:5.2f}x merged")
    print(f"max |logit diff| stacked vs peft: mixed {diff:.2e}, one adapter {diff_one:.2e} "
          f"(the adapters move the logits by up to {lora:.2e})")
    print(json.dumps({"ms_per_step": ms, "stacked_vs_peft_mixed": round(ms["peft_mixed"] / ms["stacked"], 2),
                      "stacked_vs_merged": round(ms["merged"] / ms["stacked"], 3),
                      "peft_mixed_vs_merged": round(ms["merged"] / ms["peft_mixed"], 3),
                      "stacked_one_vs_peft_one": round(ms["peft_one"] / ms["stacked_one"], 2),
                      "max_abs_logit_diff": diff, "device": device, "rows": args.rows, "adapters": args.adapters,
                      "load_average": [min(loads), max(loads)]}))


if __name__ == "__main__":
    main()
