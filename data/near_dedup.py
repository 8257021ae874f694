"""Near-duplicate detection for code: MinHash over token 5-gram shingles, LSH banding, union-find.

Two documents are near-duplicates when the Jaccard similarity of their sets of 5-token shingles is at least
`threshold` (default 0.7, the value the StarCoder data pipeline used for its near-deduplication of The Stack).
The Jaccard similarity is estimated from `num_perm` MinHash values; candidate pairs come from LSH bands and are
kept only when their estimated similarity reaches the threshold. Every cluster keeps one representative: the
document that comes first in the caller's order.

Tokens are identifiers, numbers and single punctuation characters, so formatting and whitespace do not matter,
but identifiers and numbers do (documents that differ only in names are not duplicates, unlike with prose-style
normalisation). Everything is deterministic: hashes are CRC-32 of the tokens and fixed multipliers from a seeded
generator, never Python's randomised `hash`.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")
_MASK61 = np.uint64((1 << 61) - 1)


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """The distinct hashes of the document's n-token shingles (uint64)."""
    tokens = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in TOKEN.findall(text)), dtype=np.uint64)
    if len(tokens) == 0:
        return np.zeros(0, np.uint64)
    if len(tokens) < n:
        n = len(tokens)
    h = np.zeros(len(tokens) - n + 1, np.uint64)
    for i in range(n):   # polynomial combination of the n token hashes (wrapping uint64 arithmetic)
        h = h * np.uint64(1_000_003) + tokens[i:len(tokens) - n + 1 + i]
    return np.unique(h)


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.mult = (rng.integers(1, 1 << 62, size=num_perm, dtype=np.uint64) | np.uint64(1))
        self.add = rng.integers(0, 1 << 62, size=num_perm, dtype=np.uint64)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        if len(shingles) == 0:
            return np.full(len(self.mult), np.iinfo(np.uint64).max, np.uint64)
        with np.errstate(over="ignore"):
            mixed = (shingles[:, None] * self.mult[None, :] + self.add[None, :]) & _MASK61
        return mixed.min(axis=0)


class NearDuplicateIndex:
    """Documents offered one at a time; `add` keeps a document unless it is a near-duplicate of one kept before
    (so the first document of a cluster, in the caller's order, is its representative)."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, bands: int = 32, ngram: int = 5):
        if num_perm % bands:
            raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold {threshold!r} must be in (0, 1]")
        self.threshold, self.bands, self.rows, self.ngram = threshold, bands, num_perm // bands, ngram
        self.hasher = MinHasher(num_perm)
        self.signatures: list[np.ndarray] = []
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]

    def match(self, text: str) -> tuple[int | None, np.ndarray]:
        """(index of a kept near-duplicate or None, the text's signature)."""
        sig = self.hasher.signature(shingle_hashes(text, self.ngram))
        tried: set[int] = set()
        for b, bucket in enumerate(self.buckets):
            for j in bucket.get(sig[b * self.rows:(b + 1) * self.rows].tobytes(), ()):
                if j not in tried:
                    tried.add(j)
                    if float(np.mean(self.signatures[j] == sig)) >= self.threshold:
                        return j, sig
        return None, sig

    def add(self, text: str) -> bool:
        found, sig = self.match(text)
        if found is not None:
            return False
        i = len(self.signatures)
        self.signatures.append(sig)
        for b, bucket in enumerate(self.buckets):
            bucket.setdefault(sig[b * self.rows:(b + 1) * self.rows].tobytes(), []).append(i)
        return True


GENERATED_MARKERS = re.compile(r"@generated|DO NOT EDIT|[Aa]uto-?generated|[Aa]utomatically generated|"
                               r"[Gg]enerated (?:by|from|with|using) ")


def looks_generated(text: str, head_chars: int = 1000) -> bool:
    """A generated file announces itself near its top (torchgen's `@generated`, protoc's `DO NOT EDIT`, ...)."""
    return GENERATED_MARKERS.search(text[:head_chars]) is not None
