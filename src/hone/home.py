"""Where hone keeps its state: converted models, runs and caches (`~/.cache/hone` or $HONE_HOME).

Converted models go to $HONE_MODELS when it is set: several hone homes (a team's, CI's, one per test)
then convert the embedded model once instead of once each (25 s and 1.6 GB a time).
"""
from __future__ import annotations

import os
from pathlib import Path


def hone_home() -> Path:
    """The hone home folder, created on first use."""
    home = Path(os.environ.get("HONE_HOME") or Path.home() / ".cache" / "hone").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    path = Path(os.environ["HONE_MODELS"]).expanduser() if os.environ.get("HONE_MODELS") else hone_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = hone_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path
