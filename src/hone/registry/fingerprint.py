"""Content fingerprints: sha256 of data files and of model folders, and the library versions of a run."""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "SQLAlchemy")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """The files that make up a model folder, in a stable order (hidden and temporary files skipped)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def folder_sha256(folder: Path, file_hash=file_sha256) -> str:
    """One hash over every file's relative name and content hash: same weights and files, same hash."""
    digest = hashlib.sha256()
    for path in folder_files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_hash(path)}\n".encode())
    return digest.hexdigest()


def data_fingerprints(files: dict[str, str | None]) -> dict[str, dict]:
    """{role: {path, sha256, bytes}} for each data file that exists (the split manifest will replace this)."""
    prints = {}
    for role, name in files.items():
        if name and Path(name).is_file():
            path = Path(name)
            prints[role] = {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": path.stat().st_size}
    return prints


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
