"""The worked example's documents and questions, from a registry package no one here wrote (docs/knowledge.md).

`zaragoza-construction-faq` 1.2.1 (CC-BY-4.0, Zaragoza AB): 503 English Q&As on Swedish construction law.
Its answers become the documents (one JSONL record per answer, keyed by the FAQ's id); a seeded sample of
its questions, with their answers as references and their ids as gold sources, becomes the evaluation set.
The package is read through its metadata, never imported.

    pip install --no-deps zaragoza-construction-faq==1.2.1
    python examples/knowledge/prepare_faq.py OUT_DIR [--questions 60] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dist = importlib.metadata.distribution("zaragoza-construction-faq")
    source = Path(str(dist.locate_file("zaragoza_construction_faq/data/faq-en.jsonl")))
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "handbook.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"id": row["id"], "title": row["category"], "text": row["a"]},
                                    ensure_ascii=False) + "\n")
    picked = random.Random(args.seed).sample(rows, args.questions)
    with (args.out / "questions.jsonl").open("w", encoding="utf-8") as handle:
        for row in picked:
            handle.write(json.dumps({"messages": [{"role": "user", "content": row["q"]},
                                                  {"role": "assistant", "content": row["a"]}],
                                     "source": f"handbook.jsonl:{row['id']}"}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} documents -> {args.out / 'handbook.jsonl'}; {len(picked)} questions -> "
          f"{args.out / 'questions.jsonl'} (from {dist.metadata['Name']} {dist.version}, {dist.metadata['License']})")


if __name__ == "__main__":
    main()
