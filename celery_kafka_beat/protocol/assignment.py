"""Which live session should own an entry: bounded loads, weighted by tick rate, sticky to the current owners.

Every node computes the same answer from the same folded state (:func:`balance` is a pure function of the log:
the candidates, the entries' weights from the catalogs and the current owners), and each claims what the answer
gives it and releases what it does not.

* **Weights.** An entry weighs its tick rate (:func:`tick_weight`, ticks per 1000 days): one every second weighs
  86,400 times one a day. The weights travel in the catalogs, so every node weighs every entry alike.
* **Bounded loads.** A session keeps or is given an entry only while its load stays within
  ``cap = W/k + w_max/2`` (``W`` the total weight, ``k`` the number of candidate sessions, ``w_max`` the heaviest
  entry). Entries are placed heaviest first on the least loaded candidate, so with equal weights no session owns
  more than ``ceil(n/k)`` entries, and with any weights no session carries more than ``W/k + w_max``: at most
  ``1.25 W/k`` whenever no entry weighs more than a quarter of ``W/k`` (``docs/protocol.md``, "Assignment").
* **Sticky.** Current owners keep their entries up to the cap (the lightest first, so one above the cap hands
  over few entries); only the rest is placed afresh. A join moves what the other sessions hold above the new,
  lower cap, which is about the newcomer's share; a leave moves only the leaver's entries. Ties go to the
  session that ranks the entry highest (rendezvous hashing), so without owners (a cold start) the answer depends
  only on the candidates and the weights, not on the order the sessions started in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Final, Protocol

__all__ = ["MAX_WEIGHT", "Balancer", "tick_weight"]

_MASK: Final = (1 << 64) - 1

#: A fixed start for measuring tick rates (Monday 2026-01-05 00:00 UTC): every node measures from the same point.
_RATE_FROM_MS: Final = 1_767_571_200_000
#: Intervals measured per entry: the rate is ``_RATE_TICKS`` over the time from the first to the last tick.
_RATE_TICKS: Final = 4
_DAYS_MS: Final = 1000 * 86_400_000  # 1000 days: weights are ticks per 1000 days, so a daily entry weighs 1000
#: Heaviest weight (an entry every millisecond or more often); lightest is 1 (once in 1000 days or rarer, or no
#: further tick).
MAX_WEIGHT: Final = _DAYS_MS
#: Most passes of :meth:`Balancer.balance` (each a pure function of the last: the answer stays a pure function).
_PASSES: Final = 8


class _Schedule(Protocol):
    def next_tick(self, entry: str, prev: int, after: int) -> int | None: ...  # pragma: no cover


def tick_weight(schedule: _Schedule, entry: str) -> int:
    """The entry's tick rate in ticks per 1000 days (at least 1), measured over its first ticks from a fixed time.

    An estimate for crontab entries whose ticks are uneven (weekday hours, say): good enough to spread load, and
    the same on every node with the same schedule."""
    first = schedule.next_tick(entry, _RATE_FROM_MS, _RATE_FROM_MS)
    if first is None:
        return 1
    tick = first
    for _ in range(_RATE_TICKS):
        nxt = schedule.next_tick(entry, tick, tick)
        if nxt is None or nxt <= tick:
            return 1
        tick = nxt
    return max(1, min(MAX_WEIGHT, round(_RATE_TICKS * _DAYS_MS / (tick - first))))


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """splitmix64 finaliser: cheap, well-distributed combination of an entry and a session hash."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


class Balancer:
    """Caches per-name hashes; :meth:`balance` is a pure function of its arguments."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def _hash(self, text: str) -> int:
        h = self._cache.get(text)
        if h is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            h = self._cache[text] = _h64(text)
        return h

    def score(self, entry: str, session: str) -> int:
        """How much ``session`` wants ``entry`` (rendezvous weight); the same on every node."""
        return _mix(self._hash(entry) ^ self._hash(session))

    def balance(
        self,
        weights: Mapping[str, int],
        candidates: Mapping[str, Collection[str]],
        owned: Mapping[str, Collection[str]],
    ) -> dict[str, str]:
        """Who should own each entry of ``candidates`` (entries without a candidate are left out).

        ``weights``: each entry's weight (missing: 1); ``candidates``: the sessions that may own each entry;
        ``owned``: the entries each session owns now. One pass (:meth:`_pass`) keeps and places; a session that a
        pass left above the cap (it kept an entry nobody else had room for) keeps its lightest entries on the next
        pass and offers the heaviest again, which may fit elsewhere now: passes repeat until one moves nothing (at
        most ``_PASSES``; 1 or 2 in practice), so that the nodes, once they own what it says, agree there is
        nothing left to move."""
        result, moved = self._pass(weights, candidates, owned)
        for _ in range(_PASSES - 1):
            if not moved:
                break
            again: dict[str, list[str]] = {}
            for entry, session in result.items():
                again.setdefault(session, []).append(entry)
            result, moved = self._pass(weights, candidates, again)
        return result

    def moves(
        self,
        weights: Mapping[str, int],
        candidates: Mapping[str, Collection[str]],
        owned: Mapping[str, Collection[str]],
    ) -> list[str]:
        """The entries :meth:`balance` would give to another session than their owner (or that have none), sorted:
        empty once ownership has settled."""
        answer = self.balance(weights, candidates, owned)
        return sorted(e for e, s in answer.items() if e not in owned.get(s, ()))

    def _pass(
        self,
        weights: Mapping[str, int],
        candidates: Mapping[str, Collection[str]],
        owned: Mapping[str, Collection[str]],
    ) -> tuple[dict[str, str], bool]:
        """One pass: keep, then place; and whether any entry went to another session than its owner (or had
        none). Loads are compared in integers: a session has room for ``w`` while ``2k(load + w) <= 2W + k w_max``."""
        sessions = sorted({s for cs in candidates.values() for s in cs})
        if not sessions:
            return {}, False
        weight = weights.get
        k = len(sessions)
        total = w_max = 0
        for entry in candidates:
            w = weight(entry, 1)
            total += w
            w_max = max(w_max, w)
        limit = 2 * total + k * w_max  # room for w while 2k (load + w) <= limit
        hard = 2 * total + 2 * k * w_max  # and never more than W/k + w_max
        load = dict.fromkeys(sessions, 0)
        result: dict[str, str] = {}
        # Keep: each owner keeps its entries, lightest first (then those it ranks highest), while they fit: an owner
        # above the cap hands over few, heavy entries rather than many light ones.
        owner_of: dict[str, str] = {}
        for owner in sorted(owned):
            if owner not in load:
                continue
            items = [e for e in owned[owner] if owner in candidates.get(e, ())]
            mine = sum(weight(e, 1) for e in items)
            if 2 * k * mine <= limit:
                load[owner] = mine
                result.update(dict.fromkeys(items, owner))
                continue
            items.sort(key=lambda e, o=owner: (weight(e, 1), -self.score(e, o), e))  # type: ignore[misc]
            for entry in items:
                w = weight(entry, 1)
                if 2 * k * (load[owner] + w) <= limit:
                    load[owner] += w
                    result[entry] = owner
                else:
                    owner_of[entry] = owner
        # Place the rest, heaviest first (then in hash order), on the least loaded candidate (ties: the one that
        # ranks the entry highest). If even that one has no room, the current owner keeps the entry as long as it
        # carries no more than W/k + w_max with it (the least loaded never does: it carries at most (W - w)/k).
        rest = [e for e in candidates if e not in result]
        rest.sort(key=lambda e: (-weight(e, 1), self._hash(e), e))
        moved = False
        for entry in rest:
            w = weight(entry, 1)
            he = self._hash(entry)
            chosen = min(candidates[entry], key=lambda s: (load[s], -_mix(he ^ self._hash(s)), s))
            was = owner_of.get(entry)
            if was is not None and 2 * k * (load[chosen] + w) > limit and 2 * k * (load[was] + w) <= hard:
                chosen = was  # nobody has room: the owner keeps it, up to W/k + w_max
            moved = moved or chosen != was
            load[chosen] += w
            result[entry] = chosen
        return result, moved
