"""llama.cpp as hone's fast engine on one machine, for serving and for evaluation.

    gguf.py      the GGUF a model runs from: a base converted once into the hone home, a run's export
    batch.py     BatchDecoder: many sequences decoding together in one llama.cpp context
    child.py     the child process `hone serve`'s llama.cpp engine talks to (serve/engines/llamacpp.py)
    generate.py  greedy answers for evaluation through BatchDecoder, in this process

Importing this package imports neither llama_cpp nor torch; `installed()` says whether llama.cpp is here.
"""
from __future__ import annotations

import importlib.util


def installed() -> bool:
    """Whether llama-cpp-python is installed (`make llamacpp`)."""
    return importlib.util.find_spec("llama_cpp") is not None
