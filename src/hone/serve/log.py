"""Worker log lines: one JSON object per line on stderr, like the server's request log."""
from __future__ import annotations

import json
import sys
import time


def say(**fields) -> None:
    """One JSON line on stderr per thing a worker does."""
    sys.stderr.write(json.dumps({"time": round(time.time(), 3), **fields}) + "\n")
    sys.stderr.flush()
