"""Label prediction from chat data: generative SFT vs the classification path hone advises vs TF-IDF.

The task ships with hone: `support-routing` (scripts/make_label_task.py), customer messages in OpenAI
chat format whose assistant answer is one of six team names. Its test split holds 90 items phrased
like the training data and 120 in phrasings never seen in training (each team's four held-out
phrasings), so it measures recognising a request, not remembering a sentence.

In one run, on the same train and test files, every row scored by exact match of the label:

    base       the base model generating an answer zero-shot (the system prompt lists the teams)
    tfidf      TF-IDF (word 1-2 grams) + logistic regression on the user's message (scikit-learn)
    sft        generative SFT: LoRA on the answer tokens (lr 1e-3, hone's demo recipe), greedy answer
    classify   what `hone train` picks for this file without flags (`objective: auto`): printed below
    probe      (--probe) the frozen model with only a classification head trained

SFT and classify train on the same examples for the same number of passes (`--epochs`, default 1:
27 optimizer steps of 16; the advice would take 3) so a loaded, shared machine slows both alike;
`--train-seconds` adds a wall-clock cap. The probe gets `--probe-epochs` (default 3; its steps run the
frozen model forward only). The last line is one JSON object.

    .venv/bin/python benchmarks/label_task.py [--epochs 1] [--train-seconds S] [--model smollm2-135m-instruct] [--probe]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1] / "src" / "hone" / "datasets" / "support-routing"
SEEN_TEST_ITEMS = 90  # the first 90 test lines use training phrasings; the other 120 do not


def scores(predictions: list[str], references: list[str]) -> dict:
    from hone.evaluation.metrics import exact_match

    hits = [exact_match(p, r) for p, r in zip(predictions, references)]
    return {"accuracy": round(sum(hits) / len(hits), 4),
            "seen_phrasings": round(sum(hits[:SEEN_TEST_ITEMS]) / SEEN_TEST_ITEMS, 4),
            "unseen_phrasings": round(sum(hits[SEEN_TEST_ITEMS:]) / max(1, len(hits) - SEEN_TEST_ITEMS), 4)}


def tfidf_row(train, test) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.monotonic()
    user = lambda e: e.prompt_messages[-1]["content"]  # noqa: E731
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, C=10.0).fit(vectorizer.fit_transform([user(e) for e in train]),
                                                          [e.answer for e in train])
    predictions = list(model.predict(vectorizer.transform([user(e) for e in test])))
    return {**scores(predictions, [e.answer for e in test]), "seconds": round(time.monotonic() - started, 1)}


def answers_of(ref, test) -> tuple[list[str], float]:
    from hone.evaluation.predict import Predictor

    started = time.monotonic()
    predictor = Predictor(ref)
    answers = predictor.answers([e.prompt_messages for e in test], max_new_tokens=8, batch_size=32)
    return answers, time.monotonic() - started


def train_row(config, test, console) -> dict:
    from hone.objectives import run

    result = run(config, console=console)
    record = json.loads((result.run_dir / "run.json").read_text())
    answers, seconds = answers_of(result.run_dir, test)
    return {**scores(answers, [e.answer for e in test]), "objective": record["objective"], "method": record["method"],
            "recipe_source": (record.get("recipe") or {}).get("source"),
            "steps": record["results"].get("steps"), "train_seconds": record.get("train_seconds"),
            "eval_seconds": round(seconds, 1), "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0, help="Passes over the training data (sft and classify)")
    parser.add_argument("--probe-epochs", type=float, default=3.0, help="Passes for the probe row")
    parser.add_argument("--train-seconds", type=float, default=None, help="Wall-clock cap per trained row")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--probe", action="store_true", help="Also train a frozen-model probe")
    parser.add_argument("--out", type=Path, default=None, help="Folder for the runs (default: a temp folder)")
    args = parser.parse_args()

    from rich.console import Console

    from hone.config import build_config
    from hone.data.load import load_chat_records

    console = Console(stderr=True)
    train_file, test_file = DATA / "train.jsonl", DATA / "test.jsonl"
    train, test = load_chat_records(train_file), load_chat_records(test_file)
    out = args.out or Path(tempfile.mkdtemp(prefix="hone-label-task-"))
    common = {"model": {"name": args.model}, "data": {"train": str(train_file)},
              "train": {"time_budget": args.train_seconds, "epochs": args.epochs}, "eval": {"forgetting": False}}
    rows = {}
    started = time.monotonic()

    console.print("[bold]tfidf[/bold]: TF-IDF + logistic regression")
    rows["tfidf"] = tfidf_row(train, test)
    console.print("[bold]base[/bold]: the base model answering zero-shot")
    answers, seconds = answers_of(args.model, test)
    rows["base"] = {**scores(answers, [e.answer for e in test]), "eval_seconds": round(seconds, 1)}
    console.print("[bold]classify[/bold]: `hone train --data train.jsonl` with no objective (the advised recipe)")
    rows["classify"] = train_row(build_config({**common, "output": str(out / "classify")}), test, console)
    console.print("[bold]sft[/bold]: generative SFT, LoRA on the answer tokens")
    sft = {**common, "objective": "sft", "output": str(out / "sft"),
           "train": {**common["train"], "lr": 1e-3}}
    rows["sft"] = train_row(build_config(sft), test, console)
    if args.probe:
        probe = {**common, "objective": "classify", "method": {"name": "probe"}, "output": str(out / "probe"),
                 "train": {**common["train"], "epochs": args.probe_epochs, "lr": 1e-3}}
        rows["probe"] = train_row(build_config(probe), test, console)

    print(f"\nsupport-routing: {len(train)} train, {len(test)} test ({SEEN_TEST_ITEMS} seen phrasings, "
          f"{len(test) - SEEN_TEST_ITEMS} unseen); model {args.model}; {args.epochs:g} epoch(s)"
          + (f", at most {args.train_seconds:g} s training" if args.train_seconds else ""))
    print(f"{'row':<10} {'accuracy':>9} {'seen':>7} {'unseen':>7}  recipe")
    for name, row in rows.items():
        recipe = f"{row['objective']} + {row['method']} ({row['recipe_source']}), {row['steps']} steps, " \
                 f"{row['train_seconds']:.0f} s" if "objective" in row else ""
        print(f"{name:<10} {row['accuracy']:>9.3f} {row['seen_phrasings']:>7.3f} {row['unseen_phrasings']:>7.3f}  {recipe}")
    print(json.dumps({"benchmark": "label_task", "task": "support-routing", "model": args.model,
                      "epochs": args.epochs, "probe_epochs": args.probe_epochs, "train_seconds_cap": args.train_seconds, "n_train": len(train), "n_test": len(test),
                      "threads": os.environ.get("OMP_NUM_THREADS"), "load_average": os.getloadavg(),
                      "wall_seconds": round(time.monotonic() - started, 1), "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
