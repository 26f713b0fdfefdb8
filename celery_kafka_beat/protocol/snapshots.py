"""Snapshots, seen from one node: which complete snapshots it has read, when it should write one, what to delete.

The oldest live ready session writes a snapshot of the whole state when ``snapshot_records`` records or
``snapshot_interval_ms`` of log time have passed since the last one, and at once (at most once a lease) when a
starting node asks for one with a ``wait`` record. Once all parts of its own snapshot are read back, it deletes
what the *previous* complete snapshot covers: one snapshot interval of slack, so a running node must lag a whole
interval behind before records vanish under it.

A part counts only if the fold accepted it (a live session wrote it, and its ``as_of`` is below its own offset) and
it agrees with the other parts of its snapshot on ``as_of`` and the number of parts: a stray or lying part can
neither stop snapshots nor trigger a deletion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.actions import Truncate
from celery_kafka_beat.protocol.sizing import chunk_text
from celery_kafka_beat.protocol.state import ClusterState

__all__ = ["Snapshots"]

#: Snapshots still missing parts that a node keeps track of; the oldest are forgotten first.
MAX_ASSEMBLING = 8


@dataclass(slots=True)
class _Writing:
    snap_id: str
    as_of: int
    started: int


@dataclass(slots=True)
class _Assembly:
    parts: int
    seen: set[int] = field(default_factory=set)


class Snapshots:
    def __init__(self, *, every_records: int, every_ms: int, chunk_chars: int, retry_ms: int) -> None:
        self.every_records = every_records
        self.every_ms = every_ms
        self.chunk_chars = chunk_chars
        self.retry_ms = retry_ms
        self.as_of = -1
        """``as_of`` of the latest complete snapshot read."""
        self._as_of_log_time: int | None = None  # log time when it was read (or of the first look)
        self._assembling: dict[tuple[str, str, int, int], _Assembly] = {}
        self._writing: _Writing | None = None
        self._count = 0
        self._asked: int | None = None  # offset of an unanswered wait
        self._answered_at: int | None = None

    @property
    def writing(self) -> bool:
        return self._writing is not None

    def reset(self) -> None:
        """The node's session ended: a snapshot it was writing is not its business any more."""
        self._writing = None

    def seen(self, record: wire.SnapshotPart, valid: bool, state: ClusterState) -> list[Truncate]:
        """A snapshot part was folded; returns the deletion due when this node's own snapshot is complete."""
        if not valid:
            return []
        key = (record.session, record.snap_id, record.as_of, record.parts)
        assembly = self._assembling.get(key)
        if assembly is None:
            assembly = self._assembling[key] = _Assembly(record.parts)
            while len(self._assembling) > MAX_ASSEMBLING:
                del self._assembling[next(iter(self._assembling))]
        assembly.seen.add(record.part)
        if len(assembly.seen) < assembly.parts:
            return []
        del self._assembling[key]
        previous = self.as_of
        if record.as_of > self.as_of:
            self.as_of = record.as_of
            self._as_of_log_time = state.log_time
        if self._asked is not None and record.as_of >= self._asked:
            self._asked = None
        mine = self._writing
        if mine is not None and mine.snap_id == record.snap_id:
            self._writing = None
            if 0 <= previous < record.as_of:
                return [Truncate(previous + 1)]
        return []

    def asked(self, wait_offset: int) -> None:
        """A starting node cannot rebuild the state from what is left (a ``wait`` at ``wait_offset``)."""
        if self.as_of < wait_offset and (self._asked is None or wait_offset < self._asked):
            self._asked = wait_offset

    def due(self, state: ClusterState, session: str, now: int, budget: int) -> list[wire.SnapshotPart]:
        """The parts of a snapshot this node should write now (none unless it is the oldest live ready session of
        this protocol version and a snapshot is due)."""
        if self._writing is not None:
            if now - self._writing.started > 10 * self.retry_ms:
                self._writing = None  # parts lost; try again
            return []
        current = [s for s in state.sessions.values() if s.ready and s.version == wire.PROTOCOL_VERSION]
        oldest = min(current, key=lambda s: s.started, default=None)
        if oldest is None or oldest.session != session:
            return []
        if self._as_of_log_time is None:
            self._as_of_log_time = state.log_time  # count the interval from now, not from log time 0
        behind = state.offset - self.as_of
        stale = state.log_time - self._as_of_log_time >= self.every_ms
        asked = self._asked is not None and (self._answered_at is None or now - self._answered_at >= self.retry_ms)
        if not asked and behind < self.every_records and not (stale and behind > 1):
            return []
        if asked:
            self._answered_at = now
        self._count += 1
        snap_id = f"{session}/{self._count}"
        pieces = chunk_text(state.to_json(), self.chunk_chars, budget)
        self._writing = _Writing(snap_id, state.offset, now)
        return [
            wire.SnapshotPart(
                session=session,
                seq=0,  # numbered by the node as it appends them
                snap_id=snap_id,
                as_of=state.offset,
                part=i,
                parts=len(pieces),
                data=piece,
            )
            for i, piece in enumerate(pieces)
        ]
