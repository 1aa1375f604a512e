"""Which share of the parent's own training data should `hone train --continue` replay? (docs/decisions.md)

Continues one demo run on the Spanish orders (scripts/shifted_orders.py) at several replay shares, each with
the same steps and seed, and scores every version on the held-out Spanish orders (the new slice) and on the
demo's original test split (every third item): new-slice gain against old-test loss.

    python3 scripts/measure_continue_replay.py PARENT_RUN OUT_DIR [--shares 0,0.25,0.5] [--steps 16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shifted_orders import shifted_orders  # noqa: E402

import hone  # noqa: E402
from hone.objectives.demo import demo_data  # noqa: E402


def score(run: str, data: Path) -> float:
    result = hone.evaluate(run, data=data, compare_base=False, perplexity=False)
    assert result.comparison is not None
    return next(m.tuned for m in result.comparison.metrics if m.name == result.comparison.primary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent")
    parser.add_argument("out", type=Path)
    parser.add_argument("--shares", default="0,0.25,0.5")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    data = shifted_orders(args.out / "data")
    lines = (demo_data() / "test.jsonl").read_text(encoding="utf-8").splitlines()
    old_test = args.out / "data" / "old-test.jsonl"
    old_test.write_text("".join(line + "\n" for line in lines[::3]), encoding="utf-8")
    rows = [{"share": None, "run": args.parent, "new_slice": score(args.parent, data["test"]),
             "old_test": score(args.parent, old_test)}]
    print(json.dumps(rows[-1]), flush=True)
    for share in [float(s) for s in args.shares.split(",")]:
        result = hone.train(data=str(data["train"]), continue_from=args.parent,
                            output=str(args.out / f"replay-{share}"), max_steps=args.steps, train__replay=share,
                            eval__forgetting=False, eval__base=False, test=str(old_test), name="measure-replay")
        rows.append({"share": share, "run": str(result.run_dir), "new_slice": score(str(result.run_dir), data["test"]),
                     "old_test": result.tuned_score, "steps": result.steps, "train_seconds": result.train_seconds})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "replay-shares.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
