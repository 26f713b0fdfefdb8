"""One node's side of the protocol: a pure state machine from records and timer events to actions.

The shell (the Kafka runtime, or the simulator) feeds it every record of the sync topic in offset order
(:meth:`NodeCore.on_record`), calls :meth:`NodeCore.on_timer` whenever :meth:`NodeCore.next_wakeup` has passed or
records arrived, and carries out the actions it returns: append a record, dispatch a tick, truncate the topic.
Every call takes ``now``, the node's own monotonic clock in milliseconds; nothing here reads a clock.

``NodeCore`` conducts; each concern has its own module: the fold (``state.py``), start-up (``bootstrap.py``), the
broker-clock time line (``clock.py``), votes and readiness (``liveness.py``), snapshots (``snapshots.py``), which
ticks to decide (``planning.py``), who should own what (``assignment.py``) and record sizes (``sizing.py``).

Time: a node judges when ticks are due by its time line, an estimate of the **broker's** clock from the records it
reads that does not follow a broker clock step at once (``clock.py``). Its own lease it measures on its own
monotonic clock from when it *sent* the record that renewed it, minus a margin, so it gives up before anyone may
vote it out: a vote comes a whole lease after the voter *read* the session's latest record.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.actions import Action, Append, Dispatch, Note, Truncate
from celery_kafka_beat.protocol.assignment import Balancer, tick_weight
from celery_kafka_beat.protocol.bootstrap import Bootstrap, Waiter
from celery_kafka_beat.protocol.clock import BrokerClock
from celery_kafka_beat.protocol.liveness import Liveness
from celery_kafka_beat.protocol.planning import CatchUp, DeliveryMode, Schedule, plan_ticks
from celery_kafka_beat.protocol.sizing import NameSizes, chunk_text, fitting, split_items
from celery_kafka_beat.protocol.snapshots import Snapshots
from celery_kafka_beat.protocol.state import (
    DEFAULT_RULES,
    MAX_LEASE_MS,
    ClusterState,
    FoldRules,
    SessionState,
    catalog_digest,
    shown_life,
)

__all__ = [
    "Action",
    "Append",
    "Bootstrap",
    "CatchUp",
    "DeliveryMode",
    "Dispatch",
    "NodeCore",
    "NodeSettings",
    "Note",
    "Schedule",
    "Truncate",
    "Waiter",
    "plan_ticks",
]

#: Default longest wait of a due decision for others to share its record (never more than a tenth of the decision
#: lead; see NodeSettings.decide_batch_ms).
_DECIDE_BATCH_MS: Final = 20

#: How many of its recent records' send times a node keeps for its time line's upper bounds (clock.py): a few
#: seconds' worth even under load, across its sessions.
_SEND_TIMES: Final = 256

#: A local time before any other (monotonic clocks need not start at zero, and the simulator's do not). An agenda
#: item planned at it is due at once.
_NEVER: Final = -(2**62)


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
    probation_ms: int = 5000
    """How long a session must have been live before it says ``ready`` and may take entries: longer than a
    crash-looping replica lives, short enough that a new replica gets its share soon."""
    clock_step_ms: int = 1000
    """A change of the broker's clock larger than this is a step, held rather than followed (``clock.py``)."""
    clock_hold_ms: int = 600_000
    """How long a broker clock step is held before it is adopted: a leader that moved to a broker with a wrong
    clock is usually moved back by Kafka's preferred-leader election within five minutes."""
    max_record_bytes: int = 1_000_000
    """No record written is larger than this (the topic's ``max.message.bytes``; the runtime lowers it to the
    topic's own setting)."""

    @property
    def margin_ms(self) -> int:
        return self.lease_margin_ms if self.lease_margin_ms is not None else max(1, self.lease_ms // 10)

    @property
    def batch_ms(self) -> int:
        if self.decide_batch_ms is not None:
            return self.decide_batch_ms
        return min(_DECIDE_BATCH_MS, self.decision_lead_ms // 10)

    def validate(self, rules: FoldRules = DEFAULT_RULES) -> None:
        """Raise ``ValueError`` naming the setting to change."""
        if self.lease_ms < 10:
            raise ValueError(f"lease_ms={self.lease_ms}: must be at least 10 ms")
        if self.lease_ms > rules.max_lease_ms:
            raise ValueError(
                f"lease_ms={self.lease_ms}: must be at most {rules.max_lease_ms} ms (the protocol refuses longer "
                "leases: a start afresh after deleted records waits for the longest one)"
            )
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
        if self.decision_lead_ms >= MAX_LEASE_MS:
            raise ValueError(f"decision_lead_ms={self.decision_lead_ms}: must be below {MAX_LEASE_MS} ms")
        if self.snapshot_records < 1 or self.chunk_chars < 1024 or self.max_batch < 1:
            raise ValueError("snapshot_records and max_batch must be positive, chunk_chars at least 1024")
        if self.probation_ms < 0 or self.clock_step_ms < 1 or self.clock_hold_ms < 0:
            raise ValueError("probation_ms and clock_hold_ms must not be negative, clock_step_ms must be positive")
        if self.max_record_bytes < 4096:
            raise ValueError(f"max_record_bytes={self.max_record_bytes}: must be at least 4096")


def _entry_of(item: wire.DecideItem) -> str:
    return item.entry


@dataclass(slots=True)
class _Sent:
    record: wire.Record
    at: int


class NodeCore:
    """The protocol state machine of one node. Not thread-safe; the shell serialises calls."""

    def __init__(
        self,
        settings: NodeSettings,
        entries: Iterable[str],
        schedule: Schedule,
        new_session_id: Callable[[], str],
        state: ClusterState | None = None,
        *,
        rules: FoldRules = DEFAULT_RULES,
    ) -> None:
        settings.validate(rules)
        self.settings = settings
        self.schedule = schedule
        self.entries: frozenset[str] = frozenset(entries)
        # Each entry weighs its tick rate; the weights travel in the catalog, so that every node balances alike.
        self.weights: dict[str, int] = {name: tick_weight(schedule, name) for name in sorted(self.entries)}
        self.catalog, self._catalog_data = catalog_digest(self.weights)
        self._new_session_id = new_session_id
        self.state = state if state is not None else ClusterState(rules=rules)
        self.clock = BrokerClock(step_ms=settings.clock_step_ms, hold_ms=settings.clock_hold_ms)
        self.record_budget = settings.max_record_bytes
        """Largest record to write, in bytes; the shell lowers it if the topic refuses a record as too large."""
        self._sizes = NameSizes()
        self._liveness = Liveness()
        self._snapshots = Snapshots(
            every_records=settings.snapshot_records,
            every_ms=settings.snapshot_interval_ms,
            chunk_chars=settings.chunk_chars,
            retry_ms=settings.lease_ms,
        )
        self._balancer = Balancer()
        self.session: str | None = None
        self._my_sessions: deque[str] = deque(maxlen=16)  # this node's recent sessions: never its own peers
        # When each recent record of this node (any of its sessions) was sent: the clock's upper bounds.
        self._send_times: dict[tuple[str, int], int] = {}
        self.live = False
        self.stopping = False
        self.stopped = False
        self.lease_deadline = _NEVER  # local clocks may be negative: no valid lease until renewed
        self._live_since: int | None = None
        self._ready_sent_at: int | None = None
        self._seq = 0
        self._sent: dict[int, _Sent] = {}
        self._last_sent_at = -(10**12)
        self._desired: frozenset[str] = frozenset()
        self._desired_key: tuple[int, int, int, str | None] | None = None
        # The last answer of the balancer (entry -> session), and a count of grants it did not foresee. A grant it
        # did not foresee makes the node ask again at once; grants it foresaw (at start-up, 100,000 entries are
        # granted in dozens of records) at most once a heartbeat interval, so that every node, once the grants
        # stop, asks from the same state and they agree: an answer from a state a peer never asked from could give
        # an entry to the peer while the peer's answer gives it back, and nobody would claim it.
        self._assigned: dict[str, str] = {}
        self._unforeseen = 0
        self._asked_granted = -1  # state.granted when the balancer was last asked
        self._asked_at = -(10**12)
        self._inputs_key: int | None = None
        self._inputs: tuple[Mapping[str, int], dict[str, frozenset[str]]] = ({}, {})
        self._deferring = False  # claiming nothing while a node of an older protocol version is live
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
        # Published ticks to confirm in the log: (entry, tick, session it was handed out under). Kept across a
        # lost session: a confirmation counts from an ended session too, and spares the next owner a re-send.
        self._unacked: list[tuple[str, int, str]] = []
        self._unacked_since: int | None = None  # local time a timer first saw _unacked non-empty
        # Ticks handed to the shell (Dispatch) whose publish it has not yet reported (on_dispatched or
        # on_dispatch_failed): a clean stop waits for them before its goodbye.
        self._outstanding: set[tuple[str, int]] = set()
        # Entries not decided further because one of their ticks is with the shell and overdue (a Celery broker
        # outage): when the shell reports it, the entry is planned again, by the catch-up policy.
        self._blocked: set[str] = set()
        self._resent: set[tuple[str, int]] = set()
        self._agenda: list[tuple[int, str]] = []  # heap of (broker ms to plan at, entry)
        self._planned: dict[str, int] = {}
        self._bye_sent = False

    # -- clocks -------------------------------------------------------------------------------------------------

    def broker_now(self, now: int) -> int | None:
        """The node's time line (the broker's clock, not following steps at once); None before the first record."""
        return self.clock.now(now)

    def _local_or(self, broker_ms: int, default: int) -> int:
        local = self.clock.to_local(broker_ms)
        return default if local is None else local  # (not `or`: 0 is a valid local time)

    def to_local(self, broker_ms: int) -> int | None:
        return self.clock.to_local(broker_ms)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def prime_clock(self, recent: Iterable[tuple[int, int, wire.Record | None]]) -> list[Action]:
        """Start the time line from the last records read while starting (``Bootstrap.recent``): a step that ready
        peers hold is joined when this node's hello comes back (see ``BrokerClock.prime``), before its first claims
        (which then carry the held line), rather than from the first peer record read after them."""
        self.clock.prime(
            [
                (ts, read_at, record is not None and self.state.is_ready(record.session), getattr(record, "hold", None))
                for ts, read_at, record in recent
            ],
            self.settings.heartbeat_ms,
        )
        return []

    def start(self, now: int) -> list[Action]:
        """Begin a new session (after the shell has read the topic up to its end into ``state``)."""
        self.session = self._new_session_id()
        self._my_sessions.append(self.session)
        self.live = False
        self._live_since = self._ready_sent_at = None
        self._seq = 0
        self._sent.clear()
        self._bye_sent = False
        self._released.clear()
        self._resent.clear()  # a new session re-sends whatever is still unconfirmed when it owns the entry
        self._liveness.reset(self.state, self.session, now)
        self._snapshots.reset()
        actions: list[Action] = [Note("info", f"session {self.session} starting")]
        if self.catalog not in self.state.catalogs:
            actions += self._catalog_parts(now)
        hello = wire.Hello(
            session=self.session, seq=0, node=self.settings.node, lease_ms=self.settings.lease_ms, catalog=self.catalog
        )
        actions.append(self._append(hello, now))
        return actions

    def abandon(self, now: int) -> list[Action]:
        """The shell gives this core up (records it had not read were deleted, say): end its session in the log
        at once, so that others need not wait for a vote, and stop. The shell then starts afresh."""
        actions: list[Action] = [*self._flush_acks(now)]
        if self.session is not None and self.state.is_live(self.session):
            actions.append(self._append(wire.Goodbye(session=self.session, seq=0), now))
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
        outcome = self.state.apply(offset, timestamp, record)
        actions: list[Action] = []
        mine = record is not None and self.session is not None and record.session == self.session
        peer_hold = None
        if record is not None and not mine:
            self._liveness.heard(self.state, record.session, now)
            if self.state.is_ready(record.session) and record.session not in self._my_sessions:
                peer_hold = record.hold
        sent_at = None if record is None else self._send_times.get((record.session, record.seq))
        step = self.clock.observe(timestamp, now, peer_hold, sent_at)
        if step is not None:
            actions.append(Note("warning", step.describe(offset)))
        if outcome.granted and record is not None:
            assigned = self._assigned
            if any(assigned.get(name) != record.session for name in outcome.granted):
                self._unforeseen += 1
        if isinstance(record, wire.SnapshotPart):
            actions += self._snapshots.seen(record, outcome.valid, self.state)
        elif isinstance(record, wire.Wait):
            self._snapshots.asked(offset)
        elif isinstance(record, wire.Genesis) and outcome.valid:
            actions.append(Note("warning", f"the state started afresh (genesis at offset {offset})"))
        if record is None or not mine:
            if self.live and not self.state.is_live(self.session or ""):
                actions += self._lose_session(now, self._why_ended())
            return actions
        assert record is not None
        sent = self._sent.pop(record.seq, None)
        if sent is None:
            return actions  # a record of this session already handled (or a duplicate)
        session_live = self.state.is_live(record.session)
        if session_live and outcome.valid:
            self.lease_deadline = max(self.lease_deadline, sent.at + self.settings.lease_ms - self.settings.margin_ms)
        match record:
            case wire.Hello():
                if outcome.valid:
                    self.live = True
                    self._live_since = now
                    actions.append(Note("info", f"session {self.session} is live at offset {offset}"))
                else:
                    actions += self._lose_session(now, "hello was not accepted")
                return actions
            case wire.Claim():
                for name in record.entries:
                    self._claiming.pop(name, None)
                for name in outcome.granted:
                    self._schedule_plan(name, _NEVER)
            case wire.Decide():
                for item in record.items:
                    self._deciding.pop(item.entry, None)
                for item in outcome.decided:
                    heapq.heappush(self._to_publish, (item.tick, item.entry, item.epoch))
                for item in record.items:
                    self._schedule_plan(item.entry, _NEVER)
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
            actions += self._lose_session(now, self._why_ended())
        return actions

    def _why_ended(self) -> str:
        if self.session in self.state.ended:
            return "another replica voted it out (it had read no record of this node for a lease)"
        return "the log shows this node's session ended"

    # -- timers -------------------------------------------------------------------------------------------------

    def on_timer(self, now: int) -> list[Action]:
        """Do whatever is due: publish, decide, claim, release, vote, heartbeat, snapshot."""
        if self.session is None:
            return []
        if self.stopped:
            return self._flush_acks(now)  # a tick the shell published after the goodbye is still confirmed
        actions: list[Action] = []
        if self.live and now > self.lease_deadline:
            actions += self._lose_session(now, "own lease ran out before it could be renewed")
            if self.stopped or not self.live:
                return actions
        if not self.live:
            actions += self._flush_acks(now)  # confirmations of an ended session still count
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
                actions.append(self._append(wire.Goodbye(session=self.session, seq=0), now))
            elif not self._bye_sent and now - self._last_sent_at >= self.settings.heartbeat_ms:
                # Still waiting for ticks to be published: keep the lease, or they could not be published.
                actions.append(self._append(wire.Heartbeat(session=self.session, seq=0), now))
            return actions
        actions += self._reconcile(now)
        actions += self._flush_acks_batched(now)
        actions += self._votes(now)
        actions += self._ready(now)
        actions += self._release(now)
        actions += self._claim(now)
        actions += self._resend(broker_now)
        actions += self._decide(now, broker_now)
        budget = self.record_budget
        for part in self._snapshots.due(self.state, self.session, now, budget):
            actions.append(self._append(part, now))
        if now - self._last_sent_at >= self.settings.heartbeat_ms:
            actions.append(self._append(wire.Heartbeat(session=self.session, seq=0), now))
        return actions

    def next_wakeup(self, now: int) -> int:
        """Local time at which :meth:`on_timer` should next run (earlier is harmless)."""
        if self.stopped or not self.live:
            if self._unacked:
                return now  # confirmations go out at once, even between sessions
            return now + self.settings.heartbeat_ms
        times = [self.lease_deadline + 1]
        if self._to_publish:
            times.append(self._local_or(self._to_publish[0][0], now))
        if self.stopping:
            # No decisions or votes any more (the agenda may hold past times: waking for it would spin); only
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
        vote = self._liveness.next_due(self.state, self.session)
        if vote is not None:
            times.append(vote)
        if self._live_since is not None and not self.state.is_ready(self.session or ""):
            if self._ready_sent_at is None:
                times.append(self._live_since + self.settings.probation_ms)
            else:
                times.append(self._ready_sent_at + self.settings.lease_ms)
        if self._snapshots.writing:
            times.append(now + self.settings.heartbeat_ms // 4)
        if self._unacked:
            since = now if self._unacked_since is None else self._unacked_since
            times.append(since + self._decide_batch_ms)
        return max(now, min(times))

    def on_dispatched(self, entry: str, tick: int, session: str | None = None) -> None:
        """The shell published the tick's task (handed out under ``session``, by default the current one);
        remember to say so in the log (at-least-once mode)."""
        self._outstanding.discard((entry, tick))
        self._unblock(entry)
        session = session or self.session
        if self.settings.delivery is DeliveryMode.AT_LEAST_ONCE and session is not None:
            self._unacked.append((entry, tick, session))

    def on_dispatch_failed(self, entry: str, tick: int, session: str | None = None) -> None:
        """The shell could not (or chose not to) publish the tick: it stays unacknowledged, so in at-least-once
        mode the next owner publishes it again. ``session``: the one the tick was handed out under; a report about
        an earlier session's tick changes nothing (this session may have re-sent that tick meanwhile)."""
        if session is not None and session != self.session:
            return
        self._outstanding.discard((entry, tick))
        self._resent.discard((entry, tick))  # a re-send that did not go out may be tried again
        self._unblock(entry)

    def flush_acks(self, now: int) -> list[Action]:
        """Say at once which ticks were published (rather than at the next timer): shortens the window in which
        a crash makes the next owner publish a tick again. Also between sessions: a confirmation from an ended
        session counts."""
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
        """Number the record, stamp it with the time line, and remember it to read it back."""
        record = dataclasses.replace(record, seq=self._next_seq(), hold=self.clock.hold(now))
        self._sent[record.seq] = _Sent(record, now)
        self._send_times[(record.session, record.seq)] = now
        if len(self._send_times) > _SEND_TIMES:
            del self._send_times[next(iter(self._send_times))]
        self._last_sent_at = now
        return Append(record)

    def _catalog_parts(self, now: int) -> list[Action]:
        assert self.session is not None
        pieces = chunk_text(self._catalog_data, self.settings.chunk_chars, self.record_budget)
        return [
            self._append(
                wire.CatalogPart(
                    session=self.session, seq=0, digest=self.catalog, part=i, parts=len(pieces), data=piece
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
            # The log still thinks it lives: end it now so that others need not wait for a vote.
            actions.append(self._append(wire.Goodbye(session=old, seq=0), now))
        self.live = False
        self._live_since = None
        self._to_publish.clear()
        self._deciding.clear()
        self._claiming.clear()
        self._releasing.clear()
        self._outstanding.clear()
        self._blocked.clear()
        self._agenda.clear()
        self._planned.clear()
        self._snapshots.reset()
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
                    self._schedule_plan(name, _NEVER)
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
        if not self._unacked:
            return []
        self._unacked_since = None
        by_session: dict[str, list[tuple[str, int]]] = {}
        for entry, tick, session in self._unacked:
            by_session.setdefault(session, []).append((entry, tick))
        self._unacked = []
        actions: list[Action] = []
        for session, items in by_session.items():
            for batch in split_items(items, self._item_size, self.record_budget, self.settings.max_batch):
                record = wire.Published(session=session, seq=0, items=tuple(batch))
                if session == self.session and self.live:
                    actions.append(self._append(record, now))
                else:  # an ended session's: nothing to read back
                    actions.append(Append(dataclasses.replace(record, seq=self._next_seq(), hold=self.clock.hold(now))))
        return actions

    def _item_size(self, item: tuple[str, int]) -> int:
        return self._sizes(item[0])

    def _reconcile(self, now: int) -> list[Action]:
        """Recompute which of this node's entries it should own, when membership or ownership changed."""
        key = (self.state.membership, self.state.freed, self._unforeseen, self.session)
        granted = self.state.granted
        if key == self._desired_key and (
            granted == self._asked_granted or now - self._asked_at < self.settings.heartbeat_ms
        ):
            return []
        self._desired_key, self._asked_granted, self._asked_at = key, granted, now
        me = self.session
        notes: list[Action] = []
        deferring = self.state.old_versions_live()
        if deferring != self._deferring:
            self._deferring = deferring
            notes.append(
                Note(
                    "warning",
                    "a replica of an older protocol version is live on this topic and cannot read this version's "
                    "records: this replica claims nothing until it stops",
                )
                if deferring
                else Note("info", "no replica of an older protocol version is live any more: claiming entries")
            )
        if deferring:
            self._desired, self._assigned = frozenset(), {}
            return notes
        weights, candidates = self._assignment_inputs()
        self._assigned = self._balancer.balance(weights, candidates, self.state.owned)
        self._desired = frozenset(name for name in self.entries if self._assigned.get(name) == me)
        # Entries kept (or wanted again) after a membership change may have been dropped from the agenda.
        for name in self.state.owned.get(me or "", set()) & self._desired:
            if name not in self._planned and name not in self._deciding and name not in self._blocked:
                self._schedule_plan(name, _NEVER)
        return notes

    def _assignment_inputs(self) -> tuple[Mapping[str, int], dict[str, frozenset[str]]]:
        """Each entry's weight and candidates, from the catalogs of the live sessions (cached per membership).

        Candidates for an entry: the live sessions that said ``ready`` and can run it; only when there is none
        (the ready sessions' catalogs do not name it), the one live session that can run it and has shown the
        longest life: never whichever said hello last, which a crash-looping replica does over and over (state.py
        promotes the same way). An entry named by several catalogs weighs the most any of them gives it."""
        if self._inputs_key == self.state.membership:
            return self._inputs
        ready: dict[str, list[str]] = {}
        longest: dict[str, SessionState] = {}
        for s in self.state.sessions.values():
            if s.catalog in self.state.catalogs:
                if s.catalog not in longest or shown_life(s) > shown_life(longest[s.catalog]):
                    longest[s.catalog] = s
                if s.ready:
                    ready.setdefault(s.catalog, []).append(s.session)
        ready_groups = [(self.state.catalogs[c], frozenset(ids)) for c, ids in ready.items()]
        longest_groups = [(self.state.catalogs[c], s) for c, s in longest.items()]
        candidates: dict[str, frozenset[str]] = {}
        if len(ready_groups) == 1 and all(names <= ready_groups[0][0] for names, _ in longest_groups):
            candidates = dict.fromkeys(ready_groups[0][0], ready_groups[0][1])  # one catalog: the usual case
        else:
            for name in set().union(*(names for names, _ in longest_groups)):
                ids = frozenset().union(*(ids for names, ids in ready_groups if name in names))
                if not ids:
                    able = [s for names, s in longest_groups if name in names]
                    ids = frozenset([max(able, key=shown_life).session])
                candidates[name] = ids
        digests = {*ready, *longest}
        tables = [self.state.weights[d] for d in sorted(digests) if d in self.state.weights]
        weights: Mapping[str, int]
        if len(tables) == 1 and len(digests) == 1:
            weights = tables[0]
        else:
            merged: dict[str, int] = {}
            for table in tables:
                for name, w in table.items():
                    if w > merged.get(name, 0):
                        merged[name] = w
            weights = merged
        self._inputs_key, self._inputs = self.state.membership, (weights, candidates)
        return self._inputs

    def _ready(self, now: int) -> list[Action]:
        """Say ``ready`` once the session has been live for its probation (again if it was not read back)."""
        assert self.session is not None
        if self._live_since is None or now - self._live_since < self.settings.probation_ms:
            return []
        if self.state.is_ready(self.session):
            return []
        if self._ready_sent_at is not None and now - self._ready_sent_at < self.settings.lease_ms:
            return []
        self._ready_sent_at = now
        return [self._append(wire.Ready(session=self.session, seq=0), now)]

    def _votes(self, now: int) -> list[Action]:
        assert self.session is not None
        due = self._liveness.due(self.state, self.session, now)
        if not due:
            return []
        batches = split_items(due, self._item_size, self.record_budget, self.settings.max_batch)
        return [self._append(wire.Expire(session=self.session, seq=0, items=tuple(b)), now) for b in batches]

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
        # Everything claimable at once, in as few records as fit: one scan of the wanted entries, not one per
        # record (100,000 entries at start-up would be scanned 20 times).
        todo.sort()
        self._claiming.update(dict.fromkeys(todo, now))
        batches = split_items(todo, self._sizes, self.record_budget, self.settings.max_batch)
        return [self._append(wire.Claim(session=self.session, seq=0, entries=tuple(b)), now) for b in batches]

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
        batches = split_items(items, self._item_size, self.record_budget, self.settings.max_batch)
        return [
            *self._flush_acks(now),
            *(self._append(wire.Release(session=self.session, seq=0, items=tuple(b)), now) for b in batches),
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
        if len(self._resent) > 4 * len(self.state.foreign) + 1000:
            # Forget re-sends whose tick is no longer unconfirmed (confirmed since, or its entry moved on).
            self._resent = {
                (name, tick)
                for name, tick in self._resent
                if (e := self.state.entries.get(name)) is not None and any(t == tick for t, _ in e.unconfirmed)
            }
        return actions

    def _schedule_plan(self, name: str, at: int) -> None:
        self._planned[name] = at
        heapq.heappush(self._agenda, (at, name))

    def _unblock(self, entry: str) -> None:
        if entry in self._blocked and not any(e == entry for e, _ in self._outstanding):
            self._blocked.discard(entry)
            self._schedule_plan(entry, _NEVER)

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
        stuck: set[str] | None = None
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
            if self._outstanding:
                if stuck is None:
                    # A tick with the shell for longer than the grace (its publish keeps failing: the Celery broker
                    # is down): decide nothing more for its entry until the shell reports it, so that the ticks
                    # falling due meanwhile follow the catch-up policy instead of piling up behind it.
                    limit = broker_now - self.settings.catchup_grace_ms
                    stuck = {entry for entry, tick in self._outstanding if tick < limit}
                if name in stuck:
                    self._blocked.add(name)
                    continue
            entry = self.state.entries[name]
            prev = entry.last_tick if entry.last_tick is not None else entry.anchor
            assert prev is not None  # a granted claim sets the anchor of an entry that never ran
            ticks, again = plan_ticks(self.schedule, name, prev, broker_now, self.settings)
            if ticks:
                # One entry's ticks go in one record (see split_items): as many as fit; the rest next time.
                del ticks[fitting(len(ticks), self._sizes(name), self.record_budget) :]
                self._deciding[name] = now
                items.extend(wire.DecideItem(entry=name, epoch=owner[1], tick=t) for t in ticks)
            elif again is not None:
                self._schedule_plan(name, again)
        if not items:
            return []
        self._last_decided_at = now
        ack = self.settings.delivery is DeliveryMode.AT_LEAST_ONCE
        batches = split_items(items, self._decide_size, self.record_budget, self.settings.max_batch, _entry_of)
        return [self._append(wire.Decide(session=self.session, seq=0, items=tuple(b), ack=ack), now) for b in batches]

    def _decide_size(self, item: wire.DecideItem) -> int:
        return self._sizes(item.entry)
