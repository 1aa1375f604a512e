"""A knowledge base on disk, found by name and version, searched by meaning, by words, or both.

    HONE_HOME/kb/<name>/<version>/kb.json     what it was built from and how (sources with sha256, the
                                              fingerprint over them and the settings, counts, status)
    HONE_HOME/kb/<name>/<version>/chunks.db   SQLite: documents, chunks with their vectors, and an FTS5
                                              table whose bm25() is the word side
    HONE_HOME/kb/<name>/<version>/index.faiss faiss IndexFlatIP over the unit vectors (exact cosine)

Versions are numbered like runs: building again from changed sources (or settings) makes version n+1;
the same sources and settings give back the version that has them. `NAME` is the newest ready version,
`NAME:2` a given one. faiss was chosen by measurement (docs/decisions.md, benchmarks/kb_index.py).
Hybrid search fuses the two rankings by reciprocal rank (Cormack et al. 2009, k = 60).
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from hone.errors import UserError
from hone.home import hone_home
from hone.kb.chunking import Chunk

RRF_K = 60                # Cormack, Clarke & Buettcher 2009: robust across collections
CANDIDATES = 50           # each side's depth before fusion
MODES = ("hybrid", "dense", "bm25")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_REF = re.compile(r"^(?P<name>[^:\s/]+)(?::(?P<version>\d+))?$")
_WORD = re.compile(r"\w+")

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (path TEXT PRIMARY KEY, source TEXT, sha256 TEXT, chunks INTEGER, done INTEGER);
CREATE TABLE IF NOT EXISTS chunks (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE, source TEXT, title TEXT, text TEXT,
                                   vector BLOB, document TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5(title, text, tokenize='porter unicode61');
"""


class KnowledgeBaseError(UserError):
    """No such knowledge base, an unfinished one, or an empty one."""


@dataclass(frozen=True)
class Passage(Chunk):
    """A chunk as a search found it, with its score."""
    score: float

    def to_json(self) -> dict:
        return asdict(self)


def kb_root() -> Path:
    path = hone_home() / "kb"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise KnowledgeBaseError(f"knowledge base name {name!r}: use letters, digits, '_', '.' and '-' "
                                 "(starting with a letter or digit)")
    return name


def versions(name: str) -> list[Path]:
    """Version folders of `name`, oldest first."""
    folder = kb_root() / name
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.isdigit() and (p / "kb.json").is_file()),
                  key=lambda p: int(p.name))


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "kb.json").read_text(encoding="utf-8"))


def find_kb(ref: str) -> Path:
    """The folder of a ready knowledge base: NAME (its newest ready version), NAME:VERSION, or a folder."""
    path = Path(ref).expanduser()
    if (path / "kb.json").is_file():
        folder = path
    else:
        match = _REF.match(ref.strip())
        if not match:
            raise KnowledgeBaseError(f"{ref!r} is not a knowledge base reference; use NAME or NAME:VERSION")
        found = versions(match["name"])
        if match["version"]:
            found = [p for p in found if p.name == match["version"]]
        else:
            found = [p for p in found if read_manifest(p).get("status") == "ready"] or found
        if not found:
            known = sorted(p.name for p in kb_root().iterdir() if versions(p.name))
            hint = f"; knowledge bases here: {', '.join(known[:8])}" if known else "; create one with hone kb create"
            raise KnowledgeBaseError(f"no knowledge base {ref!r}{hint}")
        folder = found[-1]
    manifest = read_manifest(folder)
    if manifest.get("status") != "ready":
        done = f"{manifest.get('documents_done', 0)} of {manifest.get('documents', '?')} documents"
        raise KnowledgeBaseError(f"knowledge base {manifest['name']}:{manifest['version']} was not finished "
                                 f"({done}); run the same hone kb create again to resume it")
    return folder


def list_kbs() -> list[dict]:
    """Every version of every knowledge base, as its manifest (plus its folder)."""
    out = []
    for folder in sorted(kb_root().iterdir()):
        for version in versions(folder.name):
            out.append(read_manifest(version) | {"path": str(version)})
    return out


def remove_kb(ref: str) -> list[str]:
    """Delete NAME (every version) or NAME:VERSION; return the references removed."""
    match = _REF.match(ref.strip())
    found = versions(match["name"]) if match else []
    if match and match["version"]:
        found = [p for p in found if p.name == match["version"]]
    if not found:
        raise KnowledgeBaseError(f"no knowledge base {ref!r}")
    for folder in found:
        shutil.rmtree(folder)
    assert match is not None
    if not versions(match["name"]):
        shutil.rmtree(kb_root() / match["name"], ignore_errors=True)
    return [f"{match['name']}:{p.name}" for p in found]


def connect(folder: Path) -> sqlite3.Connection:
    db = sqlite3.connect(Path(folder) / "chunks.db")
    db.executescript(SCHEMA)
    return db


def _match_query(text: str) -> str:
    """An FTS5 query that ORs the question's words (each quoted: FTS5 syntax in a question is just text)."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(text))
    return " OR ".join(f'"{w}"' for w in words)


class KnowledgeBase:
    """A ready knowledge base, loaded for search: `kb.search("how do I ...", k=4)` -> passages, best first."""

    def __init__(self, ref: str | Path, encoder=None):
        import faiss

        self.folder = find_kb(str(ref))
        self.manifest = read_manifest(self.folder)
        self.name = f"{self.manifest['name']}:{self.manifest['version']}"
        if not self.manifest.get("chunks"):
            raise KnowledgeBaseError(f"knowledge base {self.name} is empty: its documents held no text")
        self.db = sqlite3.connect(self.folder / "chunks.db", check_same_thread=False)
        self.index = faiss.read_index(str(self.folder / "index.faiss"))
        self._encoder = encoder
        self._lock = threading.Lock()   # one search at a time: the server calls from worker threads

    @property
    def encoder(self):
        if self._encoder is None:
            from hone.kb.embed import Encoder

            self._encoder = Encoder(self.manifest["encoder"])
        return self._encoder

    def __len__(self) -> int:
        return int(self.manifest["chunks"])

    def dense(self, query: str, depth: int) -> list[tuple[int, float]]:
        vector = self.encoder.embed([query])
        scores, rows = self.index.search(vector, min(depth, len(self)))
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]

    def words(self, query: str, depth: int) -> list[tuple[int, float]]:
        match = _match_query(query)
        if not match:
            return []
        rows = self.db.execute("SELECT rowid, bm25(words) FROM words WHERE words MATCH ? ORDER BY bm25(words) "
                               "LIMIT ?", (match, depth)).fetchall()
        return [(int(r), -float(s)) for r, s in rows]   # FTS5's bm25() is negated: lower is better

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Passage]:
        """The `k` passages that best match `query`: dense (cosine), bm25 (words) or hybrid (both, fused)."""
        if mode not in MODES:
            raise KnowledgeBaseError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        with self._lock:
            return self._search(query, k, mode)

    def _search(self, query: str, k: int, mode: str) -> list[Passage]:
        if mode == "dense":
            ranked = self.dense(query, k)
        elif mode == "bm25":
            ranked = self.words(query, k)
        else:
            fused: dict[int, float] = {}
            for ranking in (self.dense(query, CANDIDATES), self.words(query, CANDIDATES)):
                for rank, (row, _score) in enumerate(ranking):
                    fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
        return [self._passage(row, score) for row, score in ranked[:k]]

    def _passage(self, row: int, score: float) -> Passage:
        found = self.db.execute("SELECT id, source, title, text FROM chunks WHERE rowid = ?", (row,)).fetchone()
        return Passage(found[0], found[1], found[2], found[3], round(score, 6))

    def chunks(self, limit: int | None = None) -> list[Passage]:
        """The chunks in reading order (for synthesising data from them)."""
        rows = self.db.execute("SELECT id, source, title, text FROM chunks ORDER BY rowid" +
                               (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [Passage(row[0], row[1], row[2], row[3], 0.0) for row in rows]


def open_kb(ref: str) -> KnowledgeBase:
    """A loaded knowledge base, kept for the next call (the server's): `NAME` follows its newest ready version.
    Only names: a client of the server must not open folders by path."""
    if not _REF.match(ref.strip()) or not _NAME.match(ref.strip().split(":")[0]):
        raise KnowledgeBaseError(f"no knowledge base {ref!r}; give NAME or NAME:VERSION")
    return _open_folder(str(find_kb(ref.strip())))


@lru_cache(maxsize=8)
def _open_folder(folder: str) -> KnowledgeBase:
    return KnowledgeBase(folder)
