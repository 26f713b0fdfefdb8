"""Which live session should own an entry: rendezvous (highest random weight) hashing.

Deterministic (every node computes the same answer from the same state), balanced (each capable session gets an
equal share in expectation) and stable (when a session joins or leaves, only the entries it gains or loses move).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

_MASK: Final = (1 << 64) - 1


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """splitmix64 finaliser: cheap, well-distributed combination of an entry and a session hash."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


class Rendezvous:
    """Caches per-name hashes; :meth:`choose` costs one multiply-mix per candidate."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def _hash(self, text: str) -> int:
        h = self._cache.get(text)
        if h is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            h = self._cache[text] = _h64(text)
        return h

    def choose(self, entry: str, candidates: Iterable[str]) -> str | None:
        """The candidate session with the highest weight for ``entry`` (ties broken by session id)."""
        he = self._hash(entry)
        best: tuple[int, str] | None = None
        for session in candidates:
            key = (_mix(he ^ self._hash(session)), session)
            if best is None or key > best:
                best = key
        return None if best is None else best[1]
