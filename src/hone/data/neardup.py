"""Near-duplicates in bounded memory: MinHash signatures (datasketch), banded into compact arrays.

Each record costs 8 bytes per band in memory (16 bands: 128 bytes) and its signature is spilled to a
temporary file, read back only to confirm a candidate pair. datasketch's MinHashLSH keeps Python
sets per key, which on a multi-GB file would cost kilobytes per record.
16 bands x 8 rows put the LSH threshold near Jaccard 0.7; candidates are then confirmed at
`threshold` (default 0.8) on the full 128-value signature.
"""
from __future__ import annotations

import re
import tempfile
import zlib
from array import array

import numpy as np
from datasketch import MinHash

NUM_PERM, BANDS = 128, 16
ROWS = NUM_PERM // BANDS
MAX_SHINGLES = 2000  # longer texts are compared on their first 2000 shingles: bounded time per record
_WORD = re.compile(r"\w+")


def shingles(text: str) -> set[bytes]:
    """Word 3-grams of the lower-cased text; character 5-grams for texts under 8 words."""
    words = _WORD.findall(text.lower())
    if len(words) < 8:
        flat = " ".join(words)
        grams = {flat[i:i + 5] for i in range(max(1, len(flat) - 4))}
    else:
        grams = {" ".join(words[i:i + 3]) for i in range(min(len(words) - 2, MAX_SHINGLES))}
    return {g.encode("utf-8") for g in grams}


class NearDuplicates:
    """Add texts one by one (streaming); `groups()` then gives each a group id (near-duplicates share one)."""

    def __init__(self, threshold: float = 0.8, seed: int = 1):
        self.threshold = threshold
        self._template = MinHash(num_perm=NUM_PERM, seed=seed, hashfunc=zlib.crc32)
        self._bands = [array("Q") for _ in range(BANDS)]
        self._spill = tempfile.TemporaryFile()
        self._mix = np.random.default_rng(seed).integers(1, 2**63, size=ROWS, dtype=np.uint64) | np.uint64(1)
        self.count = 0

    def add(self, text: str) -> None:
        minhash = MinHash(num_perm=NUM_PERM, hashfunc=zlib.crc32, permutations=self._template.permutations,
                          scheme=self._template.scheme)
        minhash.update_batch(shingles(text))
        signature = minhash.hashvalues.astype(np.uint64)
        # Wrapping multiply-add mixes a band's rows into one 64-bit key.
        with np.errstate(over="ignore"):
            keys = (signature.reshape(BANDS, ROWS) * self._mix).sum(axis=1, dtype=np.uint64)
        for band, key in zip(self._bands, keys.tolist()):
            band.append(key)
        self._spill.write(signature.astype(np.uint32).tobytes())
        self.count += 1

    def _signature(self, index: int) -> np.ndarray:
        size = NUM_PERM * 4
        self._spill.seek(index * size)
        return np.frombuffer(self._spill.read(size), dtype=np.uint32)

    def similarity(self, a: int, b: int) -> float:
        """Estimated Jaccard similarity of the shingles of records a and b."""
        return float(np.mean(self._signature(a) == self._signature(b)))

    def groups(self) -> np.ndarray:
        """Group id per record (the smallest index in its group); singletons are their own group."""
        self._spill.flush()
        parent = np.arange(self.count, dtype=np.int64)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        for band in self._bands:
            keys = np.frombuffer(band, dtype=np.uint64) if self.count else np.zeros(0, np.uint64)
            order = np.argsort(keys, kind="stable")
            same = np.nonzero(keys[order][1:] == keys[order][:-1])[0]
            for k in same.tolist():
                a, b = int(order[k]), int(order[k + 1])
                ra, rb = root(a), root(b)
                if ra != rb and self.similarity(a, b) >= self.threshold:
                    parent[max(ra, rb)] = min(ra, rb)
        return np.array([root(i) for i in range(self.count)], dtype=np.int64)

    def close(self) -> None:
        self._spill.close()
