"""Records that fit the topic: lists of items and long strings split so that no record exceeds a byte budget.

A record larger than the topic's ``max.message.bytes`` is refused by the broker, and retrying it never helps
(trap 17). The core therefore splits every list it writes (claims, releases, decisions, confirmations, votes) by
size as well as by count, and cuts catalogs and snapshots into parts whose encoded size fits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

__all__ = ["ENVELOPE_BYTES", "NameSizes", "chunk_text", "fitting", "split_items"]

T = TypeVar("T")

#: Bytes a record takes besides its items or data: the JSON envelope (kind, session, seq, time line, field names)
#: and Kafka's per-record overhead, with room to spare.
ENVELOPE_BYTES: Final = 512
#: Bytes an item takes besides its name: brackets, commas and up to two 64-bit integers.
ITEM_BYTES: Final = 48


class NameSizes:
    """The encoded size of names as JSON strings (escapes included), cached: a busy node sizes the same names
    again and again."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        size = self._cache.get(name)
        if size is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            size = self._cache[name] = len(json.dumps(name, ensure_ascii=False).encode()) + ITEM_BYTES
        return size


def split_items(
    items: Sequence[T],
    size_of: Callable[[T], int],
    budget: int,
    max_items: int,
    group: Callable[[T], object] | None = None,
) -> list[list[T]]:
    """Consecutive runs of ``items``, each of at most ``max_items`` items whose sizes add up to at most ``budget``
    (a single item larger than the budget goes alone: the caller's names are bounded well below any budget).

    With ``group``, consecutive items of one group are never split across runs (a group too large for one run goes
    alone): one entry's ticks must land together, or a lost first record and a later one that lands would skip a
    tick outside the catch-up policy."""
    runs: list[list[T]] = []
    for item in items:
        if group is not None and runs and runs[-1] and group(runs[-1][-1]) == group(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    batches: list[list[T]] = []
    current: list[T] = []
    used = 0
    room = max(1, budget - ENVELOPE_BYTES)
    for run in runs:
        size = sum(size_of(item) for item in run)
        if current and (used + size > room or len(current) + len(run) > max_items):
            batches.append(current)
            current, used = [], 0
        current.extend(run)
        used += size
    if current:
        batches.append(current)
    return batches


def fitting(count: int, item_size: int, budget: int) -> int:
    """How many items of ``item_size`` bytes fit in one record (at least one, at most ``count``)."""
    return max(1, min(count, (budget - ENVELOPE_BYTES) // max(1, item_size)))


def chunk_text(data: str, chunk_chars: int, budget: int) -> list[str]:
    """``data`` cut into pieces of at most ``chunk_chars`` characters whose JSON-escaped UTF-8 size fits ``budget``
    (at least one piece, possibly empty)."""
    room = max(64, budget - ENVELOPE_BYTES)
    pieces: list[str] = []
    i = 0
    while i < len(data):
        size = min(chunk_chars, len(data) - i)
        while size > 1 and len(json.dumps(data[i : i + size], ensure_ascii=False).encode()) > room:
            size //= 2
        pieces.append(data[i : i + size])
        i += size
    return pieces or [""]
