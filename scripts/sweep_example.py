"""The measured example of docs/sweeps.md: a sweep on the demo task against the default recipe, and a merge of
two adapters trained on two bundled tasks, scored on both.

    python scripts/sweep_example.py [--train-seconds 90] [--trials 3] [--test-items 40] [--out FILE]

Every figure it prints is measured in this run: scores on the first `--test-items` items of each bundled test
split (the same items for every model), wall-clock times, and the machine's load average while it ran.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console

import hone
from hone.config import build_config
from hone.home import hone_home
from hone.objectives.demo import demo_config

DATASETS = Path(hone.__file__).parent / "datasets"


def subset(source: Path, n: int, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-seconds", type=float, default=90, help="training budget of each run and trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--test-items", type=int, default=40)
    parser.add_argument("--name", default=f"demo-{time.strftime('%H%M%S')}")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    console = Console(stderr=True)
    scratch = hone_home() / "sweep-example"
    loads = [os.getloadavg()[0]]
    figures: dict = {"train_seconds": args.train_seconds, "test_items": args.test_items, "cores": os.cpu_count()}

    # 1. The default recipe (hone demo's: LoRA r16, lr 1e-3, batch 8), on the first N test items.
    orders_test = subset(DATASETS / "orders" / "test.jsonl", args.test_items, scratch / "orders-test.jsonl")
    config = demo_config(args.train_seconds)
    data = config.model_dump(mode="json", exclude_unset=True)
    data["data"]["test"] = str(orders_test)
    data["name"] = "example-orders-default"
    data.pop("output", None)
    data["train"]["eval_every"] = 4  # validation losses through training: what the sweep's pruner reads
    default_config = build_config(data, "example")
    started = time.monotonic()
    default = hone.train(default_config, console=console)
    figures["default"] = {"lr": default_config.train.lr, "lora_r": default_config.method.lora_r,
                          "metric": default.metric, "base": default.base_score, "tuned": default.tuned_score,
                          "best_val_loss": default.losses.get("best_val_loss"),
                          "seconds": round(time.monotonic() - started, 1)}
    loads.append(os.getloadavg()[0])

    # 2. A sweep of lr and LoRA rank on the same recipe: trials of the same training time, test read once.
    started = time.monotonic()
    budget = args.trials * (args.train_seconds * 2.5)  # each trial: training plus loading and validation
    sweep = hone.sweep(default_config, name=args.name, trials=args.trials, budget=budget, space="lr,lora_r",
                       console=console)
    test = sweep.test or {}
    figures["sweep"] = {"trials": [{k: t[k] for k in ("number", "state", "value", "params", "seconds")}
                                   for t in sweep.trials],
                        "best_params": sweep.best_params, "best_val_loss": sweep.best_value,
                        "metric": test.get("metric"), "base": test.get("base"), "tuned": test.get("tuned"),
                        "interval": test.get("interval"), "stopped_by": sweep.stopped_by,
                        "seconds": round(time.monotonic() - started, 1), "report": str(sweep.report)}
    loads.append(os.getloadavg()[0])

    # 3. A second adapter on the support-routing task, then the two merged (cat: the exact sum of both updates).
    routing_test = subset(DATASETS / "support-routing" / "test.jsonl", args.test_items, scratch / "routing-test.jsonl")
    routing = hone.train(build_config({
        "name": "example-routing", "objective": "sft",
        "data": {"train": str(DATASETS / "support-routing" / "train.jsonl"), "test": str(routing_test),
                 "max_length": 256},
        "method": {"name": "lora", "lora_r": 16, "lora_alpha": 32},
        "train": {"lr": 1e-3, "time_budget": args.train_seconds, "batch_size": 8, "micro_batch_size": 8},
        "eval": {"samples": 0, "forgetting": False}}, "example"), console=console)
    figures["routing"] = {"metric": routing.metric, "base": routing.base_score, "tuned": routing.tuned_score}
    started = time.monotonic()
    merged = hone.merge([str(default.run_dir), str(routing.run_dir)], method="cat", console=console)
    figures["merge"] = {"method": merged.method, "weights": merged.weights, "table": merged.table,
                        "seconds": round(time.monotonic() - started, 1), "run_dir": str(merged.run_dir)}
    loads.append(os.getloadavg()[0])
    figures["load_average"] = [round(x, 1) for x in loads]

    print(json.dumps(figures, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
