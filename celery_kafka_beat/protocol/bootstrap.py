"""How a starting node rebuilds the cluster state from what is left of the topic. Pure: no I/O, no clock.

The topic keeps everything after the latest snapshot; older records are deleted (by the nodes, or by an operator
at any offset). A starting node reads from the log start to the end offset (:class:`Bootstrap`) and starts from
the latest of these that it can verify:

* a **snapshot** whose ``as_of`` is at least ``log start - 1`` (every record after it is still there: trap 13),
  whose parts agree on their id, ``as_of`` and part count, whose ``as_of`` is below each part's offset (a part
  cannot describe the future), whose content parses and says it is the state as of ``as_of``, and whose parts the
  fold accepts (written by a live session). The records after ``as_of`` are folded on top;
* a **genesis** whose window starts at or after the log start (see ``state.py``): fold from there on an empty state;
* the log start itself if it is offset 0: fold everything.

When none of these exists (records that no snapshot covers were deleted), the node cannot know the state, so it
must not act. It becomes a :class:`Waiter`: it writes ``wait`` records, which a running node answers with a fresh
snapshot at once. If no node answers, because none is running, and nothing but waits is written for longer than
any lease (``FoldRules.genesis_quiet_ms``), the waiter writes a **genesis**: the state starts afresh, with no
owners and a floor under which no tick is decided again. What the deleted records held (the phase of interval
entries, unconfirmed ticks) is lost then; the waiter says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.actions import Action, Append, Note
from celery_kafka_beat.protocol.clock import SAMPLES
from celery_kafka_beat.protocol.state import DEFAULT_RULES, ClusterState, FoldRules

__all__ = ["Bootstrap", "Waiter"]

#: Snapshots still missing parts that a starting node keeps (a writer of stray parts cannot fill memory); the
#: oldest are dropped first.
MAX_ASSEMBLING = 8
#: Complete snapshots kept as candidates (the newest first; an older one is used only if the newer fail).
MAX_CANDIDATES = 4


@dataclass(slots=True)
class _Assembly:
    parts: int
    as_of: int
    pieces: dict[int, str] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    point: int
    """The offset the state is taken at (a snapshot's ``as_of``, a genesis's own offset)."""
    snapshot: str | None = None
    part_offsets: tuple[int, ...] = ()
    genesis_start: int = -1


class Bootstrap:
    """Feed every record from the log start (:meth:`feed`), then :meth:`finish`; see the module docstring."""

    def __init__(self, log_start: int, rules: FoldRules = DEFAULT_RULES) -> None:
        self.log_start = log_start
        self.rules = rules
        self._tail: list[tuple[int, int, wire.Record | None]] = []
        self._assembling: dict[tuple[str, str, int, int], _Assembly] = {}
        self._candidates: list[_Candidate] = []
        self._tried_scratch = False
        self.rejected: list[str] = []
        """Why candidates were not used (for the log)."""
        self.recent: deque[tuple[int, int, wire.Record | None]] = deque(maxlen=SAMPLES)
        """The last records fed with the local time they were read, ``(timestamp, read at, record)``: they set the
        starting node's time line (:meth:`NodeCore.prime_clock`), so that it joins a step its peers hold before it
        says hello, and its first claims carry the held time line."""

    def feed(self, offset: int, timestamp: int, record: wire.Record | None, now: int | None = None) -> bool:
        """Keep one record (read at local time ``now``, if the shell knows it); True when it completes a new way to
        start (then call :meth:`finish` again)."""
        self._tail.append((offset, timestamp, record))
        if now is not None:
            self.recent.append((timestamp, now, record))
        if isinstance(record, wire.Genesis):
            # Its validity depends on the record before ``start`` (the last busy one) and those after: all here.
            if self.log_start < record.start < offset:
                self._add(_Candidate(point=offset, genesis_start=record.start))
                return True
            return False
        if not isinstance(record, wire.SnapshotPart) or record.as_of >= offset:
            return False
        if record.as_of + 1 < self.log_start:
            return False  # records after as_of are gone: a claim among them would be invisible
        key = (record.session, record.snap_id, record.as_of, record.parts)
        assembly = self._assembling.get(key)
        if assembly is None:
            assembly = self._assembling[key] = _Assembly(record.parts, record.as_of)
            while len(self._assembling) > MAX_ASSEMBLING:
                del self._assembling[next(iter(self._assembling))]
        if record.part in assembly.pieces:
            return False
        assembly.pieces[record.part] = record.data
        assembly.offsets.append(offset)
        if len(assembly.pieces) < assembly.parts:
            return False
        del self._assembling[key]
        data = "".join(assembly.pieces[i] for i in range(assembly.parts))
        self._add(_Candidate(point=assembly.as_of, snapshot=data, part_offsets=tuple(assembly.offsets)))
        return True

    def _add(self, candidate: _Candidate) -> None:
        self._candidates.append(candidate)
        self._candidates.sort(key=lambda c: c.point, reverse=True)
        del self._candidates[MAX_CANDIDATES:]

    def finish(self) -> ClusterState | None:
        """The state as of the last record fed, or None if it cannot be known (then become a :class:`Waiter`)."""
        for candidate in list(self._candidates):
            state = self._from_candidate(candidate)
            self._candidates.remove(candidate)  # used or refused: never tried again
            if state is not None:
                return self._done(state)
        if self.log_start == 0 and not self._tried_scratch:
            self._tried_scratch = True
            state = ClusterState(rules=self.rules)
            self._fold(state, -1, ())
            return self._done(state)
        return None

    def _done(self, state: ClusterState) -> ClusterState:
        self._tail, self._assembling, self._candidates = [], {}, []
        return state

    def _from_candidate(self, candidate: _Candidate) -> ClusterState | None:
        if candidate.snapshot is None:
            state = ClusterState(offset=candidate.genesis_start - 2, rules=self.rules)
            if not self._fold(state, candidate.genesis_start - 2, (candidate.point,)):
                self.rejected.append(f"genesis at offset {candidate.point} is not valid")
                return None
            return state
        try:
            state = ClusterState.from_json(candidate.snapshot, self.rules)
        except ValueError as exc:
            self.rejected.append(f"snapshot as of offset {candidate.point}: {exc}")
            return None
        if state.offset != candidate.point:
            self.rejected.append(f"snapshot says as_of {candidate.point} but holds offset {state.offset}")
            return None
        if not self._fold(state, candidate.point, candidate.part_offsets):
            self.rejected.append(f"snapshot as of offset {candidate.point} was not written by a live session")
            return None
        return state

    def _fold(self, state: ClusterState, after: int, must_be_valid: tuple[int, ...]) -> bool:
        """Fold the kept records after offset ``after`` into ``state``; False if a record at one of the offsets in
        ``must_be_valid`` is not valid there."""
        check = set(must_be_valid)
        for offset, timestamp, record in self._tail:
            if offset <= after:
                continue
            outcome = state.apply(offset, timestamp, record)
            if offset in check and not outcome.valid:
                return False
        return True


class Waiter:
    """A node that cannot rebuild the state: asks for a snapshot, and writes a genesis when nobody can answer.

    The shell feeds it every record it reads (:meth:`on_record`, after :class:`Bootstrap` got it) and calls
    :meth:`on_timer` by :meth:`next_wakeup`; it carries out the actions (appends and notes). ``now`` is the node's
    monotonic clock in milliseconds.

    Its first wait is a *mark* (busy): from it on the waiter knows where the quiet stretch begins (the first record
    after the latest busy one, see ``state.py``). Once that stretch has lasted ``genesis_quiet_ms`` on its own clock
    and in broker time, it writes a genesis naming it.
    """

    def __init__(
        self, waiter_id: str, log_start: int, interval_ms: int, rules: FoldRules = DEFAULT_RULES, why: str = ""
    ) -> None:
        self.id = waiter_id
        self.log_start = log_start
        self.interval_ms = interval_ms
        self.rules = rules
        self.why = why
        self._seq = 0
        self._sent_at: int | None = None
        self._busy_seen = False
        self._quiet: tuple[int, int, int] | None = None  # (offset, broker ts, local read time) of the stretch start
        self._last_ts = -wire.MAX_INT
        self._genesis_at: int | None = None
        self._floor = -wire.MAX_INT
        self.genesis_written = 0

    def start(self, now: int) -> list[Action]:
        note = Note(
            "warning",
            f"cannot rebuild the schedule state: the sync topic starts at offset {self.log_start} and no snapshot "
            f"covers the records before it{f' ({self.why})' if self.why else ''}. Asking the running replicas for "
            "a snapshot; if none is running, the state starts afresh once the topic has been quiet for "
            f"{self.rules.genesis_quiet_ms / 1000:g} s",
        )
        return [note, *self.on_timer(now)]

    def on_record(self, offset: int, timestamp: int, record: wire.Record | None, now: int) -> None:
        self._floor = max(self._floor, timestamp)
        self._last_ts = max(self._last_ts, timestamp)
        if isinstance(record, wire.Decide):
            for item in record.items:
                self._floor = max(self._floor, item.tick)
        if wire.is_busy(record):
            self._busy_seen = True
            self._quiet = None
        elif self._busy_seen and self._quiet is None:
            self._quiet = (offset, timestamp, now)

    def on_timer(self, now: int) -> list[Action]:
        actions: list[Action] = []
        if self._sent_at is None or now - self._sent_at >= self.interval_ms:
            mark = self._sent_at is None
            self._sent_at = now
            actions.append(Append(wire.Wait(session=self.id, seq=self._next_seq(), low=self.log_start, mark=mark)))
        if self._quiet_enough(now) and (self._genesis_at is None or now - self._genesis_at >= self.interval_ms):
            assert self._quiet is not None
            self._genesis_at = now
            self.genesis_written += 1
            start, _ts, read_at = self._quiet
            actions.append(
                Note(
                    "warning",
                    f"no replica has written to the sync topic for {(now - read_at) / 1000:g} s and the records "
                    f"before offset {self.log_start} are gone: starting the schedule state afresh (genesis). Entries "
                    "start again from their next tick; unconfirmed ticks of the old state are not sent again",
                )
            )
            genesis = wire.Genesis(
                session=self.id, seq=self._next_seq(), start=start, elapsed_ms=now - read_at, floor=self._floor
            )
            actions.append(Append(genesis))
        return actions

    def _quiet_enough(self, now: int) -> bool:
        """Whether the quiet stretch has lasted long enough, on this node's clock and in broker time."""
        if self._quiet is None:
            return False
        quiet = self.rules.genesis_quiet_ms
        return now - self._quiet[2] >= quiet and self._last_ts - self._quiet[1] >= quiet

    def next_wakeup(self, now: int) -> int:
        times = [now + self.interval_ms if self._sent_at is None else self._sent_at + self.interval_ms]
        if self._quiet is not None and (quiet_at := self._quiet[2] + self.rules.genesis_quiet_ms) > now:
            times.append(quiet_at)  # (once it has passed, the next wait's timestamp may complete the stretch)
        return max(now, min(times))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
