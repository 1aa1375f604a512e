"""Near-duplicates in bounded memory: MinHash signatures (datasketch), banded into compact arrays.

Each record costs 8 bytes per band in memory (16 bands: 128 bytes) and its signature is spilled to a
temporary file, read back only to confirm a candidate pair. datasketch's MinHashLSH keeps Python
sets per key, which on a multi-GB file would cost kilobytes per record.
16 bands x 8 rows put the LSH threshold near Jaccard 0.7; candidates are then confirmed at
`threshold` (default 0.8) on the full 128-value signature.
Identical texts are common (100,000 copies of one line took ~70 s to check): a small cache reuses
the signature of a text seen recently, and `groups()` joins records with identical signatures with
numpy before it pairs the distinct ones, so the Python-level union-find sees each signature once.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import zlib
from array import array

import numpy as np
from datasketch import MinHash

NUM_PERM, BANDS = 128, 16
ROWS = NUM_PERM // BANDS
MAX_SHINGLES = 2000  # longer texts are compared on their first 2000 shingles: bounded time per record
SHINGLE_CHARS = 100_000  # ... found in the first 100,000 characters (a 50 MB record made 10 M words)
RECENT = 4096        # signatures of recently seen texts kept for reuse (bounded, whatever the file size)
_WORD = re.compile(r"\w+")


def shingles(text: str) -> set[bytes]:
    """Word 3-grams of the lower-cased text; character 5-grams for texts under 8 words."""
    words = _WORD.findall(text[:SHINGLE_CHARS].lower())
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
        self._minhash = MinHash(num_perm=NUM_PERM, seed=seed, hashfunc=zlib.crc32)  # cleared and reused
        self._bands = [array("Q") for _ in range(BANDS)]
        self._whole = array("Q")     # one key over the whole signature: identical signatures share it
        self._recent: dict[bytes, tuple] = {}
        self._spill = tempfile.TemporaryFile()
        self._mix = np.random.default_rng(seed).integers(1, 2**63, size=ROWS, dtype=np.uint64) | np.uint64(1)
        self.count = 0

    def add(self, text: str) -> None:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if (seen := self._recent.get(digest)) is None:
            seen = self._signature_of(text)
            if len(self._recent) >= RECENT:
                self._recent.clear()
            self._recent[digest] = seen
        keys, whole, packed = seen
        for band, key in zip(self._bands, keys):
            band.append(key)
        self._whole.append(whole)
        self._spill.write(packed)
        self.count += 1

    def _signature_of(self, text: str) -> tuple[list[int], int, bytes]:
        """(band keys, whole-signature key, the signature as stored) of one text."""
        self._minhash.clear()
        self._minhash.update_batch(shingles(text))
        signature = self._minhash.hashvalues.astype(np.uint64)
        # Wrapping multiply-add mixes a band's rows into one 64-bit key.
        with np.errstate(over="ignore"):
            keys = (signature.reshape(BANDS, ROWS) * self._mix).sum(axis=1, dtype=np.uint64)
        packed = signature.astype(np.uint32).tobytes()
        whole = int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")
        return keys.tolist(), whole, packed

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
        if not self.count:
            return np.zeros(0, np.int64)
        # Records with identical signatures join at once; only the first of each is paired below.
        whole = np.frombuffer(self._whole, dtype=np.uint64)
        _unique, first, inverse = np.unique(whole, return_index=True, return_inverse=True)
        parent = np.arange(len(first), dtype=np.int64)   # over distinct signatures; first[i] is a record

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        for band in self._bands:
            keys = np.frombuffer(band, dtype=np.uint64)[first]
            order = np.argsort(keys, kind="stable")
            same = np.nonzero(keys[order][1:] == keys[order][:-1])[0]
            for k in same.tolist():
                a, b = int(order[k]), int(order[k + 1])
                ra, rb = root(a), root(b)
                if ra != rb and self.similarity(int(first[a]), int(first[b])) >= self.threshold:
                    keep, join = (ra, rb) if first[ra] < first[rb] else (rb, ra)
                    parent[join] = keep
        roots = np.array([root(i) for i in range(len(first))], dtype=np.int64)
        return first[roots][inverse.reshape(-1)].astype(np.int64)

    def close(self) -> None:
        self._spill.close()
