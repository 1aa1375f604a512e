"""Embedded vector indexes for `hone kb`: build and query time on a 100k-chunk corpus, faiss vs sqlite-vec vs lancedb.

The corpus is random unit vectors of MiniLM's width (384), float32: build and query cost depend on the count
and width, not on what the vectors mean. Each index is exact (flat / brute force), so all three return the
same top k (checked against numpy); what differs is the time. Each backend runs in this process when it is
importable; a backend that cannot run here says why. Prints a table and each time as a ratio of the fastest.

    python benchmarks/kb_index.py [--chunks 100000] [--queries 200] [--k 10]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def corpus(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    asked = rng.standard_normal((queries, dim), dtype=np.float32)
    asked /= np.linalg.norm(asked, axis=1, keepdims=True)
    return vectors, asked


def run_faiss(vectors: np.ndarray, queries: np.ndarray, k: int, folder: Path):
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(folder / "index.faiss"))
    built = time.perf_counter() - started
    index = faiss.read_index(str(folder / "index.faiss"))
    started = time.perf_counter()
    ids = [index.search(q[None, :], k)[1][0].tolist() for q in queries]
    return built, (time.perf_counter() - started) / len(queries), ids


def run_sqlite_vec(vectors: np.ndarray, queries: np.ndarray, k: int, folder: Path):
    import sqlite3

    import sqlite_vec

    db = sqlite3.connect(folder / "index.db")
    if not hasattr(db, "enable_load_extension"):
        raise RuntimeError("this Python's sqlite3 was built without loadable extensions (pyenv's default)")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    started = time.perf_counter()
    db.execute(f"CREATE VIRTUAL TABLE chunks USING vec0(embedding float[{vectors.shape[1]}] distance_metric=cosine)")
    db.executemany("INSERT INTO chunks(rowid, embedding) VALUES (?, ?)",
                   ((i, v.tobytes()) for i, v in enumerate(vectors)))
    db.commit()
    built = time.perf_counter() - started
    started = time.perf_counter()
    ids = [[row[0] for row in db.execute("SELECT rowid FROM chunks WHERE embedding MATCH ? AND k = ? "
                                         "ORDER BY distance", (q.tobytes(), k))] for q in queries]
    return built, (time.perf_counter() - started) / len(queries), ids


def run_lancedb(vectors: np.ndarray, queries: np.ndarray, k: int, folder: Path):
    import lancedb
    import pyarrow as pa

    started = time.perf_counter()
    db = lancedb.connect(str(folder / "lance"))
    table = pa.table({"id": np.arange(len(vectors)),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
    handle = db.create_table("chunks", data=table)
    built = time.perf_counter() - started
    started = time.perf_counter()
    ids = [handle.search(q).metric("dot").limit(k).to_arrow()["id"].to_pylist() for q in queries]
    return built, (time.perf_counter() - started) / len(queries), ids


BACKENDS = {"faiss-cpu (IndexFlatIP)": run_faiss, "sqlite-vec (vec0)": run_sqlite_vec,
            "lancedb (flat)": run_lancedb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    vectors, queries = corpus(args.chunks, args.dim, args.queries)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :args.k]
    rows = []
    for name, run in BACKENDS.items():
        folder = Path(tempfile.mkdtemp(prefix="kb-index-"))
        try:
            built, per_query, ids = run(vectors, queries, args.k, folder)
        except Exception as exc:  # noqa: BLE001 - a backend missing here is reported, not fatal
            print(f"{name}: not run ({type(exc).__name__}: {exc})")
            continue
        finally:
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
        agree = np.mean([len(set(a) & set(b.tolist())) / args.k for a, b in zip(ids, exact)])
        rows.append((name, built, per_query * 1000, size / 2**20, agree))
    if not rows:
        return
    fastest_build, fastest_query = min(r[1] for r in rows), min(r[2] for r in rows)
    print(f"\n{args.chunks:,} chunks x {args.dim} dims, {args.queries} queries, top {args.k}")
    print(f"{'index':<26}{'build s':>9}{'x fastest':>10}{'query ms':>10}{'x fastest':>10}{'MiB':>8}"
          f"{'top-k = exact':>15}")
    for name, built, query_ms, mib, agree in rows:
        print(f"{name:<26}{built:>9.2f}{built / fastest_build:>10.1f}{query_ms:>10.2f}"
              f"{query_ms / fastest_query:>10.1f}{mib:>8.0f}{agree:>15.3f}")


if __name__ == "__main__":
    main()
