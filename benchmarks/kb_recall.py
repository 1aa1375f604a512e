"""Retrieval quality of a knowledge base: recall@k of dense, BM25 and hybrid search on questions with gold sources.

A question counts as found at k when one of its `source`/`sources` ids (a chunk id or a document name) is
among the first k passages. Prints one row per mode, and hybrid as a ratio of the better single side.

    python benchmarks/kb_recall.py KB questions.jsonl [--k 1,3,5]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kb")
    parser.add_argument("questions", type=Path)
    parser.add_argument("--k", default="1,3,5")
    args = parser.parse_args()
    from hone.data.formats import read_jsonl
    from hone.evaluation.contenders import _hit, gold_sources
    from hone.kb import KnowledgeBase

    ks = [int(k) for k in args.k.split(",")]
    kb = KnowledgeBase(args.kb)
    gold = gold_sources(args.questions)
    asked = [(line, next(m["content"] for m in reversed(r["messages"]) if m["role"] == "user"))
             for line, r in read_jsonl(args.questions) if line in gold]
    kb.search(asked[0][1], 1)   # load the encoder outside the timing
    rows = {}
    for mode in ("dense", "bm25", "hybrid"):
        started = time.perf_counter()
        found = [kb.search(question, max(ks), mode) for _line, question in asked]
        ms = (time.perf_counter() - started) / len(asked) * 1000
        rows[mode] = ([sum(_hit(gold[line], passages[:k]) for (line, _q), passages in zip(asked, found)) / len(asked)
                       for k in ks], ms)
    print(f"{kb.name}: {len(kb)} chunks, {len(asked)} questions with a gold source")
    print(f"{'mode':<8}" + "".join(f"{f'recall@{k}':>11}" for k in ks) + f"{'ms/query':>10}")
    for mode, (recalls, ms) in rows.items():
        print(f"{mode:<8}" + "".join(f"{r:>11.3f}" for r in recalls) + f"{ms:>10.1f}")
    best_single = [max(a, b) for a, b in zip(rows["dense"][0], rows["bm25"][0])]
    print("hybrid / better single side: " + ", ".join(f"@{k} {h / b:.2f}" if b else f"@{k} n/a"
                                                     for k, h, b in zip(ks, rows["hybrid"][0], best_single)))


if __name__ == "__main__":
    main()
