"""Sessions going silent, seen from one node: when to vote another session out, and when to say ``ready``.

Leases are measured where they can be measured soundly: on one monotonic clock, over one interval. A node notes
the local time at which it folded each live session's latest record. Once a whole lease of that session has passed
on its own clock without a newer record, it votes (``expire``, naming that record): the record was appended before
it was read, so by then the session's holder, who counts its lease from *sending* a record and gives up
``lease_margin_ms`` early, has stopped acting on it. Broker timestamps play no part, so a broker clock that steps
neither ends a live session early nor keeps a dead one alive.

A node is a candidate for entries only once it has been live for ``probation_ms`` and says so (``ready``): a
replica that crash-loops, or that can write but not read (it never reads its own hello back), never takes an
entry from a healthy owner.
"""

from __future__ import annotations

from celery_kafka_beat.protocol.state import ClusterState

__all__ = ["Liveness"]


class Liveness:
    """Per other session: the offset of its latest record as this node folded it, and when (local time)."""

    def __init__(self) -> None:
        self._heard: dict[str, tuple[int, int]] = {}
        self._voted: dict[str, tuple[int, int]] = {}  # session -> (its latest offset voted on, local time of the vote)

    def reset(self, state: ClusterState, me: str | None, now: int) -> None:
        """A new session of this node: count every live session as heard of now (it was read no later than now,
        so a vote comes no earlier than it should)."""
        self._voted.clear()
        self._heard = {sid: (s.last, now) for sid, s in state.sessions.items() if sid != me}

    def heard(self, state: ClusterState, session: str, now: int) -> None:
        """A record of ``session`` was folded at local time ``now``."""
        current = state.sessions.get(session)
        if current is None:
            self._heard.pop(session, None)
            return
        known = self._heard.get(session)
        if known is None or known[0] != current.last:
            self._heard[session] = (current.last, now)

    def due(self, state: ClusterState, me: str, now: int) -> list[tuple[str, int]]:
        """``(session, latest offset)`` of the sessions to vote out now (each once per latest record, again only if
        the vote was not read back within a lease)."""
        votes = []
        for sid, (last, at) in list(self._heard.items()):
            current = state.sessions.get(sid)
            if current is None or sid == me:
                self._heard.pop(sid, None)
                self._voted.pop(sid, None)
                continue
            if current.last != last:
                continue  # a newer record is folded but not noted yet (noted on the next heard())
            if now < at + current.lease_ms:
                continue
            voted = self._voted.get(sid)
            if voted is not None and voted[0] == last and now - voted[1] < current.lease_ms:
                continue
            self._voted[sid] = (last, now)
            votes.append((sid, last))
        return sorted(votes)

    def next_due(self, state: ClusterState, me: str | None) -> int | None:
        """The earliest local time at which :meth:`due` may have a vote."""
        times = []
        for sid, (_last, at) in self._heard.items():
            current = state.sessions.get(sid)
            if current is None or sid == me:
                continue
            voted = self._voted.get(sid)
            due = at + current.lease_ms
            if voted is not None and voted[0] == current.last:
                due = max(due, voted[1] + current.lease_ms)
            times.append(due)
        return min(times, default=None)
