"""`hone kb create`: documents -> sections -> chunks -> vectors + words -> a versioned knowledge base, top to bottom.

Each document is read, chunked, embedded and stored in one SQLite transaction, so an interrupted
build keeps every finished document and the same command resumes at the next one; the faiss index
and the manifest are written atomically at the end. Streaming: one document's chunks in memory at a time.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone import atomic
from hone.kb.chunking import chunk_sections
from hone.kb.documents import find_documents, read_sections
from hone.kb.store import KnowledgeBaseError, check_name, connect, kb_root, read_manifest, versions
from hone.models.catalogue import DEFAULT_ENCODER
from hone.registry.fingerprint import file_sha256

EMBED_SLICE = 256   # chunks embedded between progress updates


@dataclass
class BuildResult:
    name: str
    version: int
    folder: Path
    documents: int
    chunks: int
    seconds: float
    status: str          # "built", "resumed" or "unchanged"


def _source_names(files: list[Path]) -> list[str]:
    """How chunk ids name each file: its path relative to the files' common folder."""
    resolved = [f.resolve() for f in files]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(*[parts[0] for parts in zip(*(p.parts for p in resolved)) if len(set(parts)) == 1])
    return [p.relative_to(common).as_posix() for p in resolved]


def create_kb(name: str, documents: list[Path], encoder: str = DEFAULT_ENCODER, chunk_tokens: int | None = None,
              overlap: int | None = None, batch_size: int = 32, console: Console | None = None,
              embedder=None) -> BuildResult:
    """Build (or resume, or find unchanged) the knowledge base `name` from `documents` (files or folders).

    `chunk_tokens` defaults to the encoder's context, `overlap` to an eighth of the chunk; `embedder` is an
    already loaded `hone.kb.embed.Encoder` (tests and callers that build several)."""
    from hone.kb.embed import Encoder

    console = console or Console(stderr=True)
    check_name(name)
    started = time.monotonic()
    files = find_documents([Path(d) for d in documents])
    sources: list[dict] = [{"path": str(f.resolve()), "source": s, "sha256": file_sha256(f), "bytes": f.stat().st_size}
               for f, s in zip(files, _source_names(files))]
    model = embedder or Encoder(encoder)
    size = chunk_tokens or model.max_tokens
    if size > model.max_tokens:
        raise KnowledgeBaseError(f"--chunk-tokens {size} is longer than the encoder's context ({model.max_tokens} "
                                 f"tokens for {model.spec}); its end would never be embedded")
    step = size // 8 if overlap is None else overlap
    if not 0 <= step < size:
        raise KnowledgeBaseError(f"--overlap {step} must be at least 0 and smaller than the chunk ({size} tokens)")
    settings = {"encoder": model.spec, "chunk_tokens": size, "overlap": step}
    fingerprint = hashlib.sha256(repr((sorted((s["source"], s["sha256"]) for s in sources),
                                       sorted(settings.items()))).encode()).hexdigest()

    folder, status = _version_folder(name, fingerprint, settings)
    if status == "unchanged":
        manifest = read_manifest(folder)
        return BuildResult(name, manifest["version"], folder, manifest["documents"], manifest["chunks"],
                           time.monotonic() - started, status)
    manifest = {"name": name, "version": int(folder.name), "status": "building", "fingerprint": fingerprint,
                **settings, "dim": model.dim, "documents": len(sources), "documents_done": 0, "chunks": 0,
                "sources": sources, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if status == "resumed":
        manifest["created"] = read_manifest(folder).get("created", manifest["created"])
    atomic.write_json(folder / "kb.json", manifest)

    db = connect(folder)
    _forget_changed(db, sources)
    done = {row[0] for row in db.execute("SELECT path FROM documents WHERE done = 1")}
    todo = [s for s in sources if s["path"] not in done]
    if status == "resumed":
        console.print(f"[dim]resuming {name}:{folder.name}: {len(done)} of {len(sources)} documents already "
                      "in it[/dim]", highlight=False)
    with Progress(TextColumn("[bold]kb[/bold] {task.fields[doc]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("kb", total=len(sources), completed=len(done), doc="")
        for source in todo:
            bar.update(task, doc=source["source"][-40:])
            chunks = chunk_sections(read_sections(Path(source["path"]), source["source"]), size, step, model.count)
            vectors = []
            for start in range(0, len(chunks), EMBED_SLICE):   # a long document shows its chunks as they go
                bar.update(task, doc=f"{source['source'][-40:]} ({start}/{len(chunks)} chunks)")
                vectors += list(model.embed([c.passage for c in chunks[start:start + EMBED_SLICE]], batch_size))
            with db:   # one transaction per document: all of it or none of it survives an interrupt
                for chunk, vector in zip(chunks, vectors):
                    row = db.execute("INSERT INTO chunks (id, source, title, text, vector, document) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", (chunk.id, chunk.source, chunk.title, chunk.text,
                                                                   vector.tobytes(), source["path"])).lastrowid
                    db.execute("INSERT INTO words (rowid, title, text) VALUES (?, ?, ?)",
                               (row, chunk.title, chunk.text))
                db.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, 1)",
                           (source["path"], source["source"], source["sha256"], len(chunks)))
            manifest["documents_done"] = db.execute("SELECT count(*) FROM documents WHERE done = 1").fetchone()[0]
            atomic.write_json(folder / "kb.json", manifest)   # `hone kb list` shows how far a build got
            bar.advance(task)
    count = _write_index(db, folder, model.dim)
    db.close()
    if count == 0:
        shutil.rmtree(folder)
        if not versions(name):
            shutil.rmtree(kb_root() / name, ignore_errors=True)
        raise KnowledgeBaseError(f"knowledge base {name} would be empty: no text in "
                                 f"{', '.join(s['source'] for s in sources[:5])}{' ...' if len(sources) > 5 else ''}")
    manifest |= {"status": "ready", "documents_done": len(sources), "chunks": count,
                 "build_seconds": round(time.monotonic() - started, 1)}
    atomic.write_json(folder / "kb.json", manifest)
    return BuildResult(name, int(folder.name), folder, len(sources), count, time.monotonic() - started,
                       "resumed" if status == "resumed" else "built")


def _version_folder(name: str, fingerprint: str, settings: dict) -> tuple[Path, str]:
    """The folder to build into and why: a ready version with these sources and settings is reused as it is;
    an unfinished newest version is resumed (its finished documents kept where their content is unchanged)."""
    existing = versions(name)
    for folder in reversed(existing):
        manifest = read_manifest(folder)
        if manifest.get("fingerprint") == fingerprint and manifest.get("status") == "ready":
            return folder, "unchanged"
    if existing and (last := read_manifest(existing[-1])).get("status") != "ready":
        if all(last.get(key) == value for key, value in settings.items()):
            return existing[-1], "resumed"
        shutil.rmtree(existing[-1])   # started with other settings: nothing in it can be kept
        existing = existing[:-1]
    number = int(existing[-1].name) + 1 if existing else 1
    folder = kb_root() / name / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, "new"


def _forget_changed(db, sources: list[dict]) -> None:
    """Drop the stored chunks of documents that are gone or changed since an interrupted build stored them."""
    wanted = {(s["path"], s["sha256"]) for s in sources}
    stale = [path for path, sha in db.execute("SELECT path, sha256 FROM documents") if (path, sha) not in wanted]
    with db:
        for path in stale:
            rows = [r[0] for r in db.execute("SELECT rowid FROM chunks WHERE document = ?", (path,))]
            db.executemany("DELETE FROM words WHERE rowid = ?", [(r,) for r in rows])
            db.executemany("DELETE FROM chunks WHERE rowid = ?", [(r,) for r in rows])
            db.execute("DELETE FROM documents WHERE path = ?", (path,))


def _write_index(db, folder: Path, dim: int) -> int:
    """faiss IndexFlatIP over every stored vector, keyed by chunk rowid; written beside, then renamed."""
    import os

    import faiss
    import numpy as np

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    rows = db.execute("SELECT rowid, vector FROM chunks ORDER BY rowid").fetchall()
    if rows:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        index.add_with_ids(vectors, ids)
    tmp = folder / f".index.faiss.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, folder / "index.faiss")
    return len(rows)
