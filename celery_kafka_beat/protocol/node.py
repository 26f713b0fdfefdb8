"""One node's side of the protocol: a pure state machine from records and timer events to actions.

The shell (the Kafka runtime, or the simulator) feeds it every record of the sync topic in offset order
(:meth:`NodeCore.on_record`), calls :meth:`NodeCore.on_timer` whenever :meth:`NodeCore.next_wakeup` has passed or
records arrived, and carries out the actions it returns: append a record, dispatch a tick, truncate the topic.
Every call takes ``now``, the node's own monotonic clock in milliseconds; nothing here reads a clock.

Time: a node judges when ticks are due by the **broker's** clock, estimated from the records it reads (broker
timestamp minus local read time, the largest recent value). That is a lower bound: ticks are never dispatched
early, at most late by the read latency, and replicas whose wall clocks disagree still dispatch on time. Its own
lease it measures on its own monotonic clock from when it *sent* the record that renewed it, minus a margin, so it
gives up before anyone else may take over.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.assignment import Rendezvous
from celery_kafka_beat.protocol.state import ClusterState, catalog_digest

#: How many recent records the broker-clock estimate looks back over: enough to contain one read soon after its
#: append (a tight bound), few enough to follow a broker clock step within seconds.
_OFFSET_SAMPLES: Final = 32

#: Default longest wait of a due decision for others to share its record (never more than a tenth of the decision
#: lead; see NodeSettings.decide_batch_ms).
_DECIDE_BATCH_MS: Final = 20

#: A local time before any other (monotonic clocks need not start at zero, and the simulator's do not).
_NEVER: Final = -(2**62)


class DeliveryMode(StrEnum):
    """What happens to a tick whose owner decided it but died before publishing it."""

    AT_MOST_ONCE = "at-most-once"
    """The tick is lost. No tick is ever published twice."""
    AT_LEAST_ONCE = "at-least-once"
    """The next owner publishes it again with the same task id (a possible, identifiable duplicate)."""


class CatchUp(StrEnum):
    """What to do with ticks that fell due while no node could dispatch (older than the grace period)."""

    SKIP = "skip"
    """Drop them; continue with the next tick that is not overdue."""
    ONCE = "once"
    """Run the latest overdue tick once and drop the others (what stock Celery beat does after downtime)."""
    ALL = "all"
    """Run every overdue tick that is within ``catchup_window_ms``, oldest first."""


class Schedule(Protocol):
    """The entries' timetables, in UTC milliseconds. Must be a pure function of its arguments."""

    def next_tick(self, entry: str, prev: int, after: int) -> int | None:
        """The first tick of ``entry`` strictly later than ``after``, for a series whose previous tick (or
        starting point, for an entry that never ran) is ``prev``; ``None`` if the entry has no further tick."""
        ...  # pragma: no cover


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """Protocol timings and policies of one node; see ``docs/configuration.md`` for each default's reason."""

    node: str
    lease_ms: int = 3000
    heartbeat_ms: int = 1000
    decision_lead_ms: int = 250
    lease_margin_ms: int | None = None
    """Defaults to a tenth of the lease: covers clock rate differences and scheduling jitter."""
    catchup: CatchUp = CatchUp.ONCE
    catchup_window_ms: int = 3_600_000
    catchup_grace_ms: int = 1000
    delivery: DeliveryMode = DeliveryMode.AT_MOST_ONCE
    snapshot_records: int = 10_000
    snapshot_interval_ms: int = 300_000
    chunk_chars: int = 256 * 1024
    max_batch: int = 5000
    decide_batch_ms: int | None = None
    """Under load, how long a due decision may wait for others to share its record. Defaults to a tenth of the
    decision lead, at most 20 ms; 0 decides every due plan at once."""

    @property
    def margin_ms(self) -> int:
        return self.lease_margin_ms if self.lease_margin_ms is not None else max(1, self.lease_ms // 10)

    @property
    def batch_ms(self) -> int:
        if self.decide_batch_ms is not None:
            return self.decide_batch_ms
        return min(_DECIDE_BATCH_MS, self.decision_lead_ms // 10)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting to change."""
        if self.lease_ms < 10:
            raise ValueError(f"lease_ms={self.lease_ms}: must be at least 10 ms")
        if not 0 < self.heartbeat_ms <= self.lease_ms // 2:
            raise ValueError(
                f"heartbeat_ms={self.heartbeat_ms}: must be positive and at most half the lease "
                f"({self.lease_ms // 2} ms) so that one lost heartbeat does not end the session"
            )
        if not 0 <= self.margin_ms < self.lease_ms - self.heartbeat_ms:
            raise ValueError(f"lease_margin_ms={self.margin_ms}: must be below lease_ms - heartbeat_ms")
        if self.decide_batch_ms is not None and not 0 <= self.decide_batch_ms <= self.decision_lead_ms:
            raise ValueError(
                f"decide_batch_ms={self.decide_batch_ms}: must be between 0 and decision_lead_ms "
                f"({self.decision_lead_ms}), or every batched decision could land after its tick"
            )
        if self.decision_lead_ms < 0 or self.catchup_grace_ms < 0 or self.catchup_window_ms < 0:
            raise ValueError("decision_lead_ms, catchup_grace_ms and catchup_window_ms must not be negative")
        if self.snapshot_records < 1 or self.chunk_chars < 1024 or self.max_batch < 1:
            raise ValueError("snapshot_records and max_batch must be positive, chunk_chars at least 1024")


# -- actions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """Append this record to the sync topic (in the order the actions are given)."""

    record: wire.Record


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish the Celery task of this tick now. ``resend`` marks an at-least-once re-send of another node's
    decided tick (same task id)."""

    entry: str
    tick: int
    session: str
    epoch: int
    resend: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    """Every record before ``before`` is covered by a snapshot that was read back: the topic may drop them."""

    before: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something an operator may want in the log."""

    level: str
    message: str


Action = Append | Dispatch | Truncate | Note


# -- tick planning -----------------------------------------------------------------------------------------------

#: Bound on how many ticks one planning step walks through (a one-second entry after a day of downtime is
#: 86,400); past it the latest tick found so far is used, which only matters for CatchUp.ONCE/ALL precision.
_MAX_WALK: Final = 200_000


def plan_ticks(
    schedule: Schedule, entry: str, prev: int, broker_now: int, settings: NodeSettings
) -> tuple[list[int], int | None]:
    """Ticks of ``entry`` to decide now, and the broker time at which to plan again (None: never).

    A tick within ``catchup_grace_ms`` of now is merely late (a handover) and always decided; older ones are
    overdue and handled by the catch-up policy.
    """
    lead, grace = settings.decision_lead_ms, settings.catchup_grace_ms
    first = schedule.next_tick(entry, prev, prev)
    if first is None:
        return [], None
    if first > broker_now + lead:
        return [], first - lead
    if first >= broker_now - grace:
        return [first], None
    cutoff = broker_now - grace
    if settings.catchup is CatchUp.SKIP:
        nxt = schedule.next_tick(entry, prev, cutoff - 1)
        if nxt is None:
            return [], None
        return ([nxt], None) if nxt <= broker_now + lead else ([], nxt - lead)
    if settings.catchup is CatchUp.ONCE:
        latest, steps = first, 0
        while steps < _MAX_WALK:
            nxt = schedule.next_tick(entry, prev, latest)
            if nxt is None or nxt > broker_now:
                break
            latest, steps = nxt, steps + 1
        return [latest], None
    # CatchUp.ALL: every overdue tick within the window, oldest first, a bounded number per step.
    floor = broker_now - settings.catchup_window_ms
    tick: int | None = first if first >= floor else schedule.next_tick(entry, prev, floor - 1)
    ticks: list[int] = []
    while tick is not None and tick <= broker_now + lead and len(ticks) < settings.max_batch:
        ticks.append(tick)
        tick = schedule.next_tick(entry, prev, tick)
    if ticks or tick is None:
        return ticks, None
    return [], tick - lead


# -- the node ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sent:
    record: wire.Record
    at: int


@dataclass(slots=True)
class _Snapshotting:
    snap_id: str
    as_of: int
    waiting: set[int] = field(default_factory=set)
    started: int = 0


class NodeCore:
    """The protocol state machine of one node. Not thread-safe; the shell serialises calls."""

    def __init__(
        self,
        settings: NodeSettings,
        entries: Iterable[str],
        schedule: Schedule,
        new_session_id: Callable[[], str],
        state: ClusterState | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.schedule = schedule
        self.entries: frozenset[str] = frozenset(entries)
        self.catalog, self._catalog_data = catalog_digest(self.entries)
        self._new_session_id = new_session_id
        self.state = state if state is not None else ClusterState()
        self._rendezvous = Rendezvous()
        self.session: str | None = None
        self.live = False
        self.stopping = False
        self.stopped = False
        self.lease_deadline = _NEVER  # local clocks may be negative: no valid lease until renewed
        self._seq = 0
        self._sent: dict[int, _Sent] = {}
        self._last_sent_at = -(10**12)
        self._offsets: deque[int] = deque(maxlen=_OFFSET_SAMPLES)
        self._desired: frozenset[str] = frozenset()
        self._desired_key: tuple[int, int, str | None] | None = None
        self._claim_key: tuple[frozenset[str], int, int, str | None] | None = None
        self._undesired_key: tuple[frozenset[str], int, int, str | None] | None = None
        self._undesired: frozenset[str] = frozenset()  # owned entries not wanted (cached under _undesired_key)
        self._decide_batch_ms = settings.batch_ms
        self._last_decided_at = -(10**12)
        # In-flight requests by entry, with the local time they were sent: a record can be lost (the producer
        # gives up after message.timeout.ms), so after a lease without read-back the node asks again.
        self._claiming: dict[str, int] = {}
        self._releasing: dict[str, int] = {}
        self._deciding: dict[str, int] = {}
        self._released: set[tuple[str, int]] = set()  # (entry, epoch) claims this session gave up
        self._to_publish: list[tuple[int, str, int]] = []  # heap of (tick, entry, epoch)
        self._unacked: list[tuple[str, int]] = []
        self._unacked_since: int | None = None  # local time a timer first saw _unacked non-empty
        # Ticks handed to the shell (Dispatch) whose publish it has not yet reported (on_dispatched or
        # on_dispatch_failed): a clean stop waits for them before its goodbye.
        self._outstanding: set[tuple[str, int]] = set()
        self._resent: set[tuple[str, int]] = set()
        self._agenda: list[tuple[int, str]] = []  # heap of (broker ms to plan at, entry)
        self._planned: dict[str, int] = {}
        self._bye_sent = False
        self._snapshot_as_of = -1
        self._snapshot_log_time: int | None = None  # log time of the latest snapshot (or of the first look)
        self._snapshot_parts: dict[str, set[int]] = {}
        self._snapshotting: _Snapshotting | None = None
        self._snap_count = 0

    # -- clocks -------------------------------------------------------------------------------------------------

    def broker_now(self, now: int) -> int | None:
        """A lower bound of the broker's clock from the records read; None before the first one."""
        if not self._offsets:
            return None
        return now + max(self._offsets)

    def _local_or(self, broker_ms: int, default: int) -> int:
        local = self.to_local(broker_ms)
        return default if local is None else local  # (not `or`: 0 is a valid local time)

    def to_local(self, broker_ms: int) -> int | None:
        if not self._offsets:
            return None
        return broker_ms - max(self._offsets)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, now: int) -> list[Action]:
        """Begin a new session (after the shell has read the topic up to its end into ``state``)."""
        self.session = self._new_session_id()
        self.live = False
        self._seq = 0
        self._sent.clear()
        self._bye_sent = False
        self._released.clear()
        self._resent.clear()  # a new session re-sends whatever is still unconfirmed when it owns the entry
        actions: list[Action] = [Note("info", f"session {self.session} starting")]
        if self.catalog not in self.state.catalogs:
            actions += self._catalog_parts(now)
        actions.append(
            self._append(
                wire.Hello(
                    session=self.session,
                    seq=self._next_seq(),
                    node=self.settings.node,
                    lease_ms=self.settings.lease_ms,
                    catalog=self.catalog,
                ),
                now,
            )
        )
        return actions

    def abandon(self, now: int) -> list[Action]:
        """The shell gives this core up (records it had not read were deleted, say): end its session in the log
        at once, so that others need not wait for its lease, and stop. The shell then starts a fresh core."""
        actions: list[Action] = []
        if self.session is not None and self.state.is_live(self.session):
            actions.append(Append(wire.Goodbye(session=self.session, seq=self._next_seq())))
        self.live = False
        self.stopped = True
        self._to_publish.clear()
        return actions

    def stop(self, now: int) -> list[Action]:
        """Begin a clean shutdown: no new decisions; publish what is decided, then say goodbye."""
        self.stopping = True
        return self.on_timer(now)

    # -- records ------------------------------------------------------------------------------------------------

    def on_record(self, offset: int, timestamp: int, record: wire.Record | None, now: int) -> list[Action]:
        """Fold one record of the sync topic; act on it if it is one of this node's own."""
        # The record was appended before it was read: the broker's clock now is at least its timestamp.
        self._offsets.append(timestamp - now)
        outcome = self.state.apply(offset, timestamp, record)
        actions: list[Action] = []
        if isinstance(record, wire.SnapshotPart):
            actions += self._snapshot_seen(record)
        if record is None or self.session is None or record.session != self.session:
            if self.live and not self.state.is_live(self.session or ""):
                actions += self._lose_session(now, "the log shows this node's lease expired")
            return actions
        sent = self._sent.pop(record.seq, None)
        if sent is None:
            return actions  # a record of this session already handled (or a duplicate)
        session_live = self.state.is_live(self.session)
        if session_live and outcome.valid:
            self.lease_deadline = max(self.lease_deadline, sent.at + self.settings.lease_ms - self.settings.margin_ms)
        match record:
            case wire.Hello():
                if outcome.valid:
                    self.live = True
                    actions.append(Note("info", f"session {self.session} is live at offset {offset}"))
                else:
                    actions += self._lose_session(now, "hello was not accepted")
                return actions
            case wire.Claim():
                for name in record.entries:
                    self._claiming.pop(name, None)
                for name in outcome.granted:
                    self._schedule_plan(name, self.state.log_time)
            case wire.Decide():
                for item in record.items:
                    self._deciding.pop(item.entry, None)
                for item in outcome.decided:
                    heapq.heappush(self._to_publish, (item.tick, item.entry, item.epoch))
                for item in record.items:
                    self._schedule_plan(item.entry, self.state.log_time)
            case wire.Release():
                for name, _ in record.items:
                    self._releasing.pop(name, None)
            case wire.Goodbye():
                if self.stopping:
                    self.stopped = True
                    self.live = False
                    return [*actions, Note("info", f"session {self.session} ended cleanly")]
            case _:
                pass
        if self.live and not session_live:
            actions += self._lose_session(now, "the log shows this node's lease expired")
        return actions

    # -- timers -------------------------------------------------------------------------------------------------

    def on_timer(self, now: int) -> list[Action]:
        """Do whatever is due: publish, decide, claim, release, heartbeat, snapshot."""
        if self.stopped or self.session is None:
            return []
        actions: list[Action] = []
        if self.live and now > self.lease_deadline:
            actions += self._lose_session(now, "own lease ran out before it could be renewed")
            if self.stopped or not self.live:
                return actions
        if not self.live:
            sent = min((s.at for s in self._sent.values() if isinstance(s.record, wire.Hello)), default=None)
            if sent is not None and now - sent > self.settings.lease_ms:
                actions.append(Note("warning", f"hello of session {self.session} not read back; starting again"))
                actions += self.start(now)
            return actions
        self._expire_inflight(now)
        broker_now = self.broker_now(now)
        assert broker_now is not None  # the hello was read back
        actions += self._publish_due(broker_now)
        if self.stopping:
            actions += self._flush_acks(now)
            if not self._to_publish and not self._deciding and not self._outstanding and not self._bye_sent:
                self._bye_sent = True
                actions.append(self._append(wire.Goodbye(session=self.session, seq=self._next_seq()), now))
            elif not self._bye_sent and now - self._last_sent_at >= self.settings.heartbeat_ms:
                # Still waiting for ticks to be published: keep the lease, or they could not be published.
                actions.append(self._append(wire.Heartbeat(session=self.session, seq=self._next_seq()), now))
            return actions
        self._reconcile()
        actions += self._flush_acks_batched(now)
        actions += self._release(now)
        actions += self._claim(now)
        actions += self._resend(broker_now)
        actions += self._decide(now, broker_now)
        actions += self._snapshot(now)
        if self._needs_heartbeat(now):
            actions.append(self._append(wire.Heartbeat(session=self.session, seq=self._next_seq()), now))
        return actions

    def next_wakeup(self, now: int) -> int:
        """Local time at which :meth:`on_timer` should next run (earlier is harmless)."""
        if self.stopped or not self.live:
            return now + self.settings.heartbeat_ms
        times = [self.lease_deadline + 1]
        if self._to_publish:
            times.append(self._local_or(self._to_publish[0][0], now))
        if self.stopping:
            # No decisions or probes any more (the agenda may hold past times: waking for it would spin); only
            # the decided ticks, the reports of ticks with the shell and heartbeats until the goodbye is sent.
            if not self._bye_sent:
                times.append(self._last_sent_at + self.settings.heartbeat_ms)
                if self._unacked or self._outstanding:
                    times.append(now + max(1, self.settings.heartbeat_ms // 4))
            return max(now, min(times))
        times.append(self._last_sent_at + self.settings.heartbeat_ms)
        if self._agenda:
            at = self._local_or(self._agenda[0][0], now)
            if self._decide_batch_ms:
                at = min(at + self._decide_batch_ms, max(at, self._last_decided_at + self._decide_batch_ms))
            times.append(at)
        probe = self._probe_at()
        if probe is not None:
            times.append(probe)
        if self._snapshotting is not None:
            times.append(now + self.settings.heartbeat_ms // 4)
        if self._unacked:
            since = now if self._unacked_since is None else self._unacked_since
            times.append(since + self._decide_batch_ms)
        return max(now, min(times))

    def on_dispatched(self, entry: str, tick: int) -> None:
        """The shell published the tick's task; remember to say so in the log (at-least-once mode)."""
        self._outstanding.discard((entry, tick))
        if self.settings.delivery is DeliveryMode.AT_LEAST_ONCE and self.live:
            self._unacked.append((entry, tick))

    def on_dispatch_failed(self, entry: str, tick: int, session: str | None = None) -> None:
        """The shell could not (or chose not to) publish the tick: it stays unacknowledged, so in at-least-once
        mode the next owner publishes it again. ``session``: the one the tick was handed out under; a report about
        an earlier session's tick changes nothing (this session may have re-sent that tick meanwhile)."""
        if session is not None and session != self.session:
            return
        self._outstanding.discard((entry, tick))
        self._resent.discard((entry, tick))  # a re-send that did not go out may be tried again

    def flush_acks(self, now: int) -> list[Action]:
        """Say at once which ticks were published (rather than at the next timer): shortens the window in which
        a crash makes the next owner publish a tick again."""
        if not self.live:
            return []
        return self._flush_acks(now)

    def can_publish(self, session: str, entry: str, epoch: int, now: int) -> bool:
        """Whether a tick handed out under (session, entry, epoch) may still be published at local time ``now``:
        the session is live, its own lease has not run out, the claim was not given up and the log still shows
        it as the owner. Shells that publish after a delay (another thread) check this right before publishing."""
        return (
            self.live
            and session == self.session
            and now <= self.lease_deadline
            and (entry, epoch) not in self._released
            and self.state.owner_of(entry) == (session, epoch)
        )

    # -- internals ----------------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _append(self, record: wire.Record, now: int) -> Append:
        self._sent[record.seq] = _Sent(record, now)
        self._last_sent_at = now
        return Append(record)

    def _catalog_parts(self, now: int) -> list[Action]:
        assert self.session is not None
        data, size = self._catalog_data, self.settings.chunk_chars
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [""]
        return [
            self._append(
                wire.CatalogPart(
                    session=self.session,
                    seq=self._next_seq(),
                    digest=self.catalog,
                    part=i,
                    parts=len(pieces),
                    data=piece,
                ),
                now,
            )
            for i, piece in enumerate(pieces)
        ]

    def _lose_session(self, now: int, why: str) -> list[Action]:
        old = self.session
        actions: list[Action] = [Note("warning", f"session {old} lost: {why}")]
        # Confirmations still gathering: a confirmation counts even from an ended session, and spares the next
        # owner a re-send.
        actions += self._flush_acks(now)
        if old is not None and self.state.is_live(old):
            # The log still thinks it lives: end it now so that others need not wait for the lease.
            actions.append(Append(wire.Goodbye(session=old, seq=self._next_seq())))
        self.live = False
        self._to_publish.clear()
        self._deciding.clear()
        self._claiming.clear()
        self._releasing.clear()
        self._unacked.clear()
        self._unacked_since = None
        self._outstanding.clear()
        self._agenda.clear()
        self._planned.clear()
        self._snapshotting = None
        self.lease_deadline = _NEVER  # local clocks may be negative: no valid lease until renewed
        if self.stopping:
            self.stopped = True
            return actions
        return actions + self.start(now)

    def _expire_inflight(self, now: int) -> None:
        """Forget requests not read back within a lease (lost appends), so that they are made again. A late
        arrival of the first one is still folded and, if valid, acted on: it is still in ``_sent``."""
        limit = now - self.settings.lease_ms
        for pending in (self._claiming, self._releasing, self._deciding):
            # Each dict is in the order its requests were sent (a name is only added when absent), so the first
            # value is the oldest: nothing to scan unless it is out of date.
            if not pending or next(iter(pending.values())) >= limit:
                continue
            for name in [n for n, at in pending.items() if at < limit]:
                del pending[name]
                if pending is self._deciding:
                    self._schedule_plan(name, self.state.log_time)
        if len(self._sent) > 1000 or (self._sent and next(iter(self._sent.values())).at < limit):
            # Past the producer's message timeout nothing can still arrive.
            horizon = now - max(30_000, 10 * self.settings.lease_ms)
            for seq in [q for q, s in self._sent.items() if s.at < horizon]:
                del self._sent[seq]

    def _publish_due(self, broker_now: int) -> list[Action]:
        assert self.session is not None
        actions: list[Action] = []
        while self._to_publish and self._to_publish[0][0] <= broker_now:
            tick, entry, epoch = heapq.heappop(self._to_publish)
            if (entry, epoch) in self._released or self.state.owner_of(entry) != (self.session, epoch):
                # The claim this tick was decided under has been given up (a release sent while the decision was
                # slow to read back): publishing now could overlap the next owner. At-least-once mode re-sends it
                # from the next owner, who sees it unpublished.
                actions.append(Note("warning", f"tick {tick} of {entry} not published: its claim was given up"))
                continue
            self._outstanding.add((entry, tick))
            actions.append(Dispatch(entry, tick, self.session, epoch))
        return actions

    def _flush_acks_batched(self, now: int) -> list[Action]:
        """Confirmations wait up to the decision batch time (from the first timer that saw them) to share a
        record; the shell's :meth:`flush_acks` appends them at once."""
        if not self._unacked:
            return []
        if self._unacked_since is None:
            self._unacked_since = now
        if now - self._unacked_since < self._decide_batch_ms:
            return []
        return self._flush_acks(now)

    def _flush_acks(self, now: int) -> list[Action]:
        if not self._unacked or self.session is None:
            return []
        self._unacked_since = None
        items, self._unacked = tuple(self._unacked), []
        return [self._append(wire.Published(session=self.session, seq=self._next_seq(), items=items), now)]

    def _reconcile(self) -> None:
        """Recompute which of this node's entries it should own, when membership or ownership changed."""
        key = (self.state.membership, self.state.freed, self.session)
        if key == self._desired_key:
            return
        self._desired_key = key
        sessions = self.state.sessions
        by_catalog: dict[str, list[str]] = {}
        for s in sessions.values():
            if s.catalog in self.state.catalogs:
                by_catalog.setdefault(s.catalog, []).append(s.session)
        groups = [(self.state.catalogs[c], ids) for c, ids in by_catalog.items()]
        me = self.session
        desired = set()
        for name in self.entries:
            candidates = [sid for names, ids in groups if name in names for sid in ids]
            if self._rendezvous.choose(name, candidates) == me:
                desired.add(name)
        self._desired = frozenset(desired)
        # Entries kept (or wanted again) after a membership change may have been dropped from the agenda.
        for name in self.state.owned.get(me or "", set()) & self._desired:
            if name not in self._planned and name not in self._deciding:
                self._schedule_plan(name, self.state.log_time)

    def _claim(self, now: int) -> list[Action]:
        assert self.session is not None
        if self.catalog not in self.state.catalogs:
            recent = now - self.settings.lease_ms
            if not any(isinstance(s.record, wire.CatalogPart) and s.at > recent for s in self._sent.values()):
                return self._catalog_parts(now)  # our catalog was dropped before our hello arrived
            return []
        # Entries become claimable only when the wanted set changes, an entry loses its owner or a claim is read
        # back or forgotten: skip the scan of every wanted entry when none of that happened since the last one.
        key = (self._desired, self.state.freed, len(self._claiming), self.session)
        if key == self._claim_key:
            return []
        todo = [name for name in self._desired if name not in self._claiming and self.state.owner_of(name) is None]
        if not todo:
            self._claim_key = key
            return []
        # Everything claimable at once, max_batch entries per record: one scan of the wanted entries, not one per
        # record (100,000 entries at start-up would be scanned 20 times).
        todo.sort()
        self._claiming.update(dict.fromkeys(todo, now))
        size = self.settings.max_batch
        return [
            self._append(wire.Claim(session=self.session, seq=self._next_seq(), entries=tuple(todo[i : i + size])), now)
            for i in range(0, len(todo), size)
        ]

    def _release(self, now: int) -> list[Action]:
        assert self.session is not None
        owned = self.state.owned.get(self.session, set())
        # Candidates: owned entries no longer wanted, and claims given up that are still held (their release may
        # have been lost). Forget given-up claims that are no longer held: every check of them also checks that the
        # entry is still owned under that epoch.
        key = (self._desired, self.state.freed, self.state.granted, self.session)
        if key != self._undesired_key:
            self._undesired_key, self._undesired = key, frozenset(owned - self._desired)
        candidates = set(self._undesired)
        for name, epoch in list(self._released):
            if self.state.owner_of(name) == (self.session, epoch):
                candidates.add(name)
            else:
                self._released.discard((name, epoch))
        if not candidates:
            return []
        # Not while a tick of the entry is decided but not yet published, or handed to the shell and not yet
        # reported: the release would fence that publish, and the next owner re-sends only the last decided tick.
        pending = {entry for _, entry, _ in self._to_publish} | {entry for entry, _ in self._outstanding}
        items = []
        for name in sorted(candidates):  # sorted: the same actions whatever the hash seed
            owner = self.state.owner_of(name)
            assert owner is not None
            if name in self._releasing:
                continue
            # A claim given up once is never used again, even if the entry is wanted back (its release may have
            # been lost, or may still land): release it again, then claim it afresh under a new epoch.
            given_up = (name, owner[1]) in self._released
            if not given_up and (name in self._desired or name in self._deciding or name in pending):
                continue
            items.append((name, owner[1]))
            if len(items) >= self.settings.max_batch:
                break
        if not items:
            return []
        self._releasing.update((name, now) for name, _ in items)
        self._released.update(items)
        # Confirmations still gathering go first: the next owner must not find a published tick unconfirmed (it
        # would publish it again).
        return [
            *self._flush_acks(now),
            self._append(wire.Release(session=self.session, seq=self._next_seq(), items=tuple(items)), now),
        ]

    def _resend(self, broker_now: int) -> list[Action]:
        if self.settings.delivery is not DeliveryMode.AT_LEAST_ONCE or self.session is None:
            return []
        actions: list[Action] = []
        # Only entries with a tick decided by another session than the owner's can have one to re-send.
        for name in sorted(self.state.owned.get(self.session, set()) & self.state.foreign):
            entry = self.state.entries[name]
            for tick, decider in entry.unconfirmed:
                key = (name, tick)
                if decider == self.session or key in self._resent or tick > broker_now:
                    continue
                self._resent.add(key)
                self._outstanding.add(key)
                actions.append(Dispatch(name, tick, self.session, entry.epoch, resend=True))
        return actions

    def _schedule_plan(self, name: str, at: int) -> None:
        self._planned[name] = at
        heapq.heappush(self._agenda, (at, name))

    def _decide(self, now: int, broker_now: int) -> list[Action]:
        assert self.session is not None
        items: list[wire.DecideItem] = []
        # Entries that should move but cannot be released yet because a tick of theirs is with a (slow) publishing
        # thread: keep deciding them meanwhile, or their ticks would fall through the gap. (Not for ticks merely
        # decided and waiting for their time: with a period shorter than the decision lead there always is one,
        # and the entry would never move.)
        # Under load, decide in batches: wait until the earliest due plan is _DECIDE_BATCH_MS old, unless the
        # previous decision is that old already (then at once, so that a quiet node decides without delay). Every
        # decision still lands at least decision_lead - _DECIDE_BATCH_MS ahead of its tick; one record carries
        # many ticks, and every replica folds fewer records.
        batch_ms = self._decide_batch_ms
        if (
            batch_ms
            and self._agenda
            and self._agenda[0][0] > broker_now - batch_ms
            and now - self._last_decided_at < batch_ms
        ):
            return []
        held: set[str] | None = None  # built on first use: most calls never need it
        while self._agenda and self._agenda[0][0] <= broker_now and len(items) < self.settings.max_batch:
            at, name = heapq.heappop(self._agenda)
            if self._planned.get(name) != at:
                continue  # superseded
            del self._planned[name]
            owner = self.state.owner_of(name)
            if owner is None or owner[0] != self.session or name in self._deciding or name in self._releasing:
                continue
            if (name, owner[1]) in self._released:
                continue  # given up (its release may still be on the way): it would not be published
            if name not in self._desired:
                if held is None:
                    held = {entry for entry, _ in self._outstanding}
                if name not in held:
                    continue  # about to be released; the next owner decides
            entry = self.state.entries[name]
            prev = entry.last_tick if entry.last_tick is not None else entry.anchor
            assert prev is not None  # a granted claim sets the anchor of an entry that never ran
            ticks, again = plan_ticks(self.schedule, name, prev, broker_now, self.settings)
            if ticks:
                self._deciding[name] = now
                items.extend(wire.DecideItem(entry=name, epoch=owner[1], tick=t) for t in ticks)
            elif again is not None:
                self._schedule_plan(name, again)
        if not items:
            return []
        self._last_decided_at = now
        ack = self.settings.delivery is DeliveryMode.AT_LEAST_ONCE
        return [self._append(wire.Decide(session=self.session, seq=self._next_seq(), items=tuple(items), ack=ack), now)]

    def _needs_heartbeat(self, now: int) -> bool:
        if now - self._last_sent_at >= self.settings.heartbeat_ms:
            return True
        probe = self._probe_at()
        return probe is not None and now >= probe

    def _probe_at(self) -> int | None:
        """Local time just after the earliest other session's lease ends in broker time: a record written then
        moves log time past it, so its entries can be taken over without waiting for the next heartbeat."""
        ends = [s.renewed + s.lease_ms for s in self.state.sessions.values() if s.session != self.session]
        if not ends:
            return None
        local = self.to_local(min(ends) + 1)
        if local is None or local <= self._last_sent_at:
            return None
        return local

    # -- snapshots ----------------------------------------------------------------------------------------------

    def _snapshot_seen(self, record: wire.SnapshotPart) -> list[Action]:
        parts = self._snapshot_parts.setdefault(record.snap_id, set())
        parts.add(record.part)
        if len(parts) < record.parts:
            return []
        del self._snapshot_parts[record.snap_id]
        previous = self._snapshot_as_of
        if record.as_of > self._snapshot_as_of:
            self._snapshot_as_of = record.as_of
            self._snapshot_log_time = self.state.log_time
        mine = self._snapshotting
        if mine is not None and mine.snap_id == record.snap_id:
            self._snapshotting = None
            # Keep one snapshot interval of slack: delete only what the *previous* snapshot covers, so that a
            # running node has to lag a whole interval behind before records vanish under it (it would then
            # have to rebuild from the topic and start a new session).
            if 0 <= previous < record.as_of:
                return [Truncate(previous + 1)]
        return []

    def _snapshot(self, now: int) -> list[Action]:
        assert self.session is not None
        if self._snapshotting is not None:
            if now - self._snapshotting.started > 10 * self.settings.lease_ms:
                self._snapshotting = None  # parts lost; try again
            return []
        sessions = self.state.sessions
        oldest = min(sessions.values(), key=lambda s: s.started, default=None)
        if oldest is None or oldest.session != self.session:
            return []
        if self._snapshot_log_time is None:
            self._snapshot_log_time = self.state.log_time  # count the interval from now, not from log time 0
        behind = self.state.offset - self._snapshot_as_of
        stale = self.state.log_time - self._snapshot_log_time >= self.settings.snapshot_interval_ms
        if behind < self.settings.snapshot_records and not (stale and behind > 1):
            return []
        self._snap_count += 1
        snap_id = f"{self.session}/{self._snap_count}"
        data, size = self.state.to_json(), self.settings.chunk_chars
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        self._snapshotting = _Snapshotting(snap_id, self.state.offset, set(range(len(pieces))), now)
        return [
            self._append(
                wire.SnapshotPart(
                    session=self.session,
                    seq=self._next_seq(),
                    snap_id=snap_id,
                    as_of=self.state.offset,
                    part=i,
                    parts=len(pieces),
                    data=piece,
                ),
                now,
            )
            for i, piece in enumerate(pieces)
        ]


@dataclass(slots=True)
class Bootstrap:
    """Rebuilds the state of a starting node from what is left of the topic.

    Feed every record from the log start to the end offset; keep the complete snapshot with the highest
    ``as_of`` and the records after it; then :meth:`finish` folds them. A topic truncated without a snapshot
    covering the gap cannot be trusted, and says so.
    """

    log_start: int
    _best: tuple[int, str] | None = None
    _parts: dict[str, dict[int, str]] = field(default_factory=dict)
    _tail: list[tuple[int, int, wire.Record | None]] = field(default_factory=list)

    def feed(self, offset: int, timestamp: int, record: wire.Record | None) -> None:
        self._tail.append((offset, timestamp, record))
        if not isinstance(record, wire.SnapshotPart):
            return
        parts = self._parts.setdefault(record.snap_id, {})
        parts[record.part] = record.data
        if len(parts) < record.parts:
            return
        del self._parts[record.snap_id]
        if self._best is not None and record.as_of <= self._best[0]:
            return
        data = "".join(parts[i] for i in range(record.parts))
        self._best = (record.as_of, data)
        self._tail = [r for r in self._tail if r[0] > record.as_of]

    def finish(self) -> ClusterState:
        if self._best is not None:
            state = ClusterState.from_json(self._best[1])
            if state.offset != self._best[0]:
                raise ValueError(f"snapshot says as_of {self._best[0]} but holds offset {state.offset}")
        elif self.log_start > 0:
            raise ValueError(
                f"the sync topic starts at offset {self.log_start} and holds no snapshot: records were deleted "
                "(by retention?) and the schedule state cannot be rebuilt; set retention.ms=-1 on the topic"
            )
        else:
            state = ClusterState()
        for offset, timestamp, record in self._tail:
            if offset > state.offset:
                state.apply(offset, timestamp, record)
        self._tail = []
        return state
