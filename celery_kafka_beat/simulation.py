"""A deterministic simulator of many nodes on one simulated partition, with faults, checked against invariants.

Everything here runs in simulated time from one seeded random generator, so a scenario replays exactly from its
seed: ``python -m celery_kafka_beat.simulation --seed N -v``. The nodes are real :class:`NodeCore` instances; the
log, the broker clock, the network and the cleaner are simulated. Half the nodes publish like KafkaScheduler, in
another thread: some time after the core hands a tick over they check ``can_publish`` and report the outcome.
After every step the checker verifies:

* every dispatched tick was validly decided in the log by the dispatching session under the same epoch, and is
  not dispatched before it is due in broker time;
* no tick is dispatched twice (in at-least-once mode only resends of another node's decided tick may repeat it);
* at the moment of a dispatch no other session holds a later valid claim on the entry (the zombie case), unless
  a forward broker clock jump made the log expire the dispatcher early (liveness, not safety, is lost then);
* a node that starts from what the cleaner left computes exactly the state of the oracle (which folded every
  record), and so does every running node that has caught up with the log;
and at the end of the run, which closes with a fault-free stretch:
* every live node owns exactly the entries the assignment gives it (the ownership has settled);
* every tick due in a calm stretch (no fault within the recovery bound) was decided within the grace period, and
  published;
* every tick that was skipped was overdue by the catch-up policy's threshold when a later tick was decided.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.node import (
    Action,
    Append,
    Bootstrap,
    CatchUp,
    DeliveryMode,
    Dispatch,
    NodeCore,
    NodeSettings,
    Note,
    Truncate,
)
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.protocol.state import ClusterState

#: A decision's broker-time estimate may run ahead of the broker by the smallest append latency; allow it.
_TOLERANCE_MS: Final = 50


class InvariantViolation(AssertionError):
    """An invariant failed; the message names the seed that replays it."""


@dataclass
class _LogRecord:
    offset: int
    ts: int
    appended_at: int
    value: bytes
    record: wire.Record | None


@dataclass
class _SimNode:
    index: int
    name: str
    entries: frozenset[str]
    rate: float
    skew: int
    read_delay: int
    core: NodeCore | None = None
    status: str = "down"  # up | paused | down
    read_pos: int = 0
    last_append_at: int = 0
    generation: int = 0
    stop_deadline: int | None = None
    timer_at: int | None = None
    read_times: deque[int] = field(default_factory=lambda: deque(maxlen=32))
    stalled_until: int = 0
    slow_until: int = 0
    lossy_until: int = 0
    deferred: bool = False
    """Publishes in another thread, like KafkaScheduler: a tick is checked (can_publish) and published some time
    after the core handed it over, and reported back then."""


@dataclass
class Scenario:
    """The knobs of one run, all drawn from the seed."""

    seed: int
    nodes: int
    entries: dict[str, int]
    settings: NodeSettings
    events: int
    fault_rate: float


@dataclass
class Report:
    seed: int
    events: int = 0
    sim_ms: int = 0
    records: int = 0
    dispatches: int = 0
    resends: int = 0
    decided: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    checked_calm_ticks: int = 0
    skipped_ticks: int = 0
    restarts_checked: int = 0
    settled_checked: int = 0

    def line(self) -> str:
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (
            f"seed={self.seed} events={self.events} sim_ms={self.sim_ms} records={self.records} "
            f"decided={self.decided} dispatched={self.dispatches} resends={self.resends} "
            f"calm_ticks_checked={self.checked_calm_ticks} skipped={self.skipped_ticks} "
            f"restart_checks={self.restarts_checked} settled_checks={self.settled_checked} faults[{faults}]"
        )


def make_scenario(seed: int, events: int = 1000, delivery: DeliveryMode | None = None) -> Scenario:
    rng = random.Random(seed)
    lease = rng.choice([300, 500, 1000, 2000])
    hb = max(10, lease // rng.choice([3, 4, 5, 8]))
    entries = {f"e{i}": rng.choice([100, 200, 250, 500, 1000, 1500]) for i in range(rng.randint(1, 8))}
    settings = NodeSettings(
        node="sim",
        lease_ms=lease,
        heartbeat_ms=hb,
        decision_lead_ms=rng.choice([0, 20, 50, 100]),
        catchup=rng.choice(list(CatchUp)),
        catchup_grace_ms=rng.choice([200, 500, 1000]),
        catchup_window_ms=rng.choice([1000, 5000]),
        delivery=delivery or rng.choice(list(DeliveryMode)),
        snapshot_records=rng.choice([20, 50, 200]),
        snapshot_interval_ms=5000,
        chunk_chars=rng.choice([1024, 4096]),
        max_batch=rng.choice([2, 100]),
        # Half the scenarios decide every due plan at once, half in batches (the default); by the seed's parity, so
        # that the draws above (and the scenarios of recorded seeds) stay as they were.
        decide_batch_ms=0 if seed % 2 else None,
    )
    return Scenario(
        seed=seed,
        nodes=rng.randint(1, 5),
        entries=entries,
        settings=settings,
        events=events,
        fault_rate=rng.choice([0.002, 0.005, 0.01]),
    )


class Simulation:
    """One seeded run. ``run()`` raises :class:`InvariantViolation` on the first broken invariant."""

    FAULTS: Final = (
        "crash",
        "restart",
        "pause",
        "stop",
        "join",
        "schedule_change",
        "read_stall",
        "slow_append",
        "lossy_append",
        "broker_stall",
        "broker_clock_jump",
    )

    def __init__(self, scenario: Scenario, trace: Callable[[str], None] | None = None) -> None:
        self.sc = scenario
        self.rng = random.Random(scenario.seed * 7919 + 1)
        # A second generator for the publishing thread's delays, so that adding it left the other draws alone.
        self.shell_rng = random.Random(scenario.seed * 104729 + 3)
        self.trace = trace
        self.now = 0
        self.log: list[_LogRecord] = []
        self.log_start = 0
        self.broker_offset = self.rng.randint(0, 10**12)  # broker epoch ms, arbitrary
        self.broker_stalled_until = 0
        self.oracle = ClusterState()
        self.decisions: dict[tuple[str, int], tuple[str, int, int, int]] = {}  # -> session, epoch, offset, ts
        self.dispatched: dict[tuple[str, int], list[tuple[str, bool, int]]] = {}
        self.queue: list[tuple[int, int, str, tuple[object, ...]]] = []
        self._seq = 0
        self.nodes: list[_SimNode] = []
        self.faults: list[tuple[int, int]] = []  # intervals of sim time during which faults act
        self.jumps: list[int] = []  # sim times of forward broker clock jumps
        self.any_jump = False
        self.coverage: list[tuple[int, frozenset[str]]] = [(-(10**18), frozenset())]  # entries some up node can run
        self.report = Report(seed=scenario.seed)
        self.last_change = 0  # sim time of the latest fault or start: membership and timing may change then
        self._sessions = 0
        self._all_entries = dict(scenario.entries)
        for _ in range(scenario.nodes):
            self._add_node(frozenset(scenario.entries))

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        raise InvariantViolation(
            f"seed {self.sc.seed} at sim time {self.now} ms: {message}\n"
            f"replay: python -m celery_kafka_beat.simulation --seed {self.sc.seed} --events {self.sc.events} -v"
        )

    def _log(self, message: str) -> None:
        if self.trace is not None:
            self.trace(f"[{self.now:>7}] {message}")

    def _push(self, at: int, kind: str, *args: object) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, kind, args))

    def _local(self, node: _SimNode, at: int | None = None) -> int:
        return int((self.now if at is None else at) * node.rate) + node.skew

    def _sim_time(self, node: _SimNode, local: int) -> int:
        return max(self.now, int((local - node.skew) / node.rate) + 1)

    def _session_id(self) -> str:
        self._sessions += 1
        return f"s{self._sessions}"

    def _add_node(self, entries: frozenset[str]) -> _SimNode:
        node = _SimNode(
            index=len(self.nodes),
            name=f"n{len(self.nodes)}",
            entries=entries,
            rate=1.0 + self.rng.uniform(-0.005, 0.005),
            skew=self.rng.randint(-600_000, 600_000),
            read_delay=self.rng.randint(1, 15),
            deferred=self.shell_rng.random() < 0.5,
        )
        self.nodes.append(node)
        self._start(node)
        return node

    # -- node lifecycle ---------------------------------------------------------------------------------------

    def _start(self, node: _SimNode) -> None:
        boot = Bootstrap(log_start=self.log_start)
        for rec in self.log[self.log_start :]:
            boot.feed(rec.offset, rec.ts, rec.record)
        state = boot.finish()
        if state.to_json() != self.oracle.to_json():
            self._fail(f"{node.name} rebuilt a state from the cleaned log that differs from the oracle's")
        self.report.restarts_checked += 1
        self.last_change = self.now
        settings = dataclasses.replace(self.sc.settings, node=node.name)
        periods = {e: self._all_entries[e] for e in node.entries}
        node.core = NodeCore(settings, node.entries, IntervalSchedule(periods), self._session_id, state=state)
        node.status = "up"
        self._covered()
        node.generation += 1
        node.timer_at = None
        node.stalled_until = 0  # a new process has a new connection
        node.read_pos = len(self.log)
        node.stop_deadline = None
        self._log(f"{node.name} starts with {sorted(node.entries)} at offset {node.read_pos}")
        self._execute(node, node.core.start(self._local(node)))
        self._arm(node)

    def _arm(self, node: _SimNode) -> None:
        if node.core is None or node.status == "down":
            return
        wake = self._sim_time(node, node.core.next_wakeup(self._local(node)))
        if node.timer_at is not None and self.now < node.timer_at <= wake:
            return  # an earlier timer is already pending; it re-arms
        node.timer_at = wake
        self._push(wake, "timer", node.index, node.generation, wake)

    def _execute(self, node: _SimNode, actions: Sequence[Action]) -> None:
        assert node.core is not None
        for action in actions:
            if isinstance(action, Append):
                self._send(node, action.record)
            elif isinstance(action, Dispatch):
                if node.deferred:
                    # Beat's thread picks it up after a while: usually at once, sometimes after a slow publish
                    # of other ticks (a sluggish Celery broker), now and then after more than a lease.
                    roll = self.shell_rng.random()
                    delay = self.shell_rng.randint(0, 5) if roll < 0.8 else self.shell_rng.randint(5, 300)
                    if roll > 0.98:
                        delay = self.shell_rng.randint(self.sc.settings.lease_ms // 2, 2 * self.sc.settings.lease_ms)
                    if delay > self.sc.settings.decision_lead_ms:
                        # A publishing thread stuck for longer than the decision lead is a fault (a slow Celery
                        # broker): an entry being handed over meanwhile may miss ticks, by the catch-up policy.
                        self._mark(self.now, self.now + delay)
                    oldest = node.read_times[0] if node.read_times else 0  # the estimate it was due by
                    self._push(self.now + delay, "publish", node.index, node.generation, action, oldest)
                    continue
                self._dispatch(node, action)
                node.core.on_dispatched(action.entry, action.tick)
            elif isinstance(action, Truncate):
                # The cleaner (delete_records) acts some time later, whenever it likes.
                self._push(self.now + self.rng.randint(0, 3000), "truncate", action.before)
            elif isinstance(action, Note):
                self._log(f"{node.name}: {action.message}")

    def _send(self, node: _SimNode, record: wire.Record) -> None:
        if self.now < node.lossy_until and self.rng.random() < 0.3:
            self._log(f"{node.name}: append of {type(record).__name__} lost")
            return
        latency = self.rng.randint(1, 10)
        if self.now < node.slow_until:
            latency += self.rng.randint(50, 3 * self.sc.settings.lease_ms)
        at = max(node.last_append_at, self.now + latency)  # one producer keeps its order
        node.last_append_at = at
        _key, value = wire.encode(record)
        self._push(at, "append", value)

    def _dispatch(self, node: _SimNode, action: Dispatch, oldest_read: int | None = None) -> None:
        key = (action.entry, action.tick)
        self.report.dispatches += 1
        self.report.resends += action.resend
        earlier = self.dispatched.setdefault(key, [])
        earlier.append((action.session, action.resend, self.now))
        # Node clocks run up to 0.5 % fast here, so the estimate may run ahead by that much since the oldest record
        # it is built from (real clocks drift by parts per million).
        if oldest_read is None:
            oldest_read = node.read_times[0] if node.read_times else 0
        oldest = oldest_read
        early_tolerance = 2 + int(0.006 * (self.now - oldest))
        if not self.any_jump and self.now + self.broker_offset + early_tolerance < action.tick:
            self._fail(f"{node.name} dispatched {key} {action.tick - self.now - self.broker_offset} ms early")
        decision = self.decisions.get(key)
        if decision is None:
            self._fail(f"{node.name} dispatched {key} which no valid decision in the log covers")
            return
        if self.sc.settings.delivery is DeliveryMode.AT_MOST_ONCE and len(earlier) > 1:
            self._fail(f"tick {key} dispatched twice in at-most-once mode: {earlier}")
        if not action.resend:
            if (action.session, action.epoch) != decision[:2]:
                self._fail(f"{node.name} dispatched {key} as {action.session}/{action.epoch}, decided by {decision}")
            if sum(not r for _, r, _ in earlier) > 1:
                self._fail(f"tick {key} dispatched twice by deciders: {earlier}")
            owner = self.oracle.owner_of(action.entry)
            jumped = any(self.now - j < 70_000 for j in self.jumps)
            if owner is not None and owner[0] != action.session and owner[1] > action.epoch and not jumped:
                self._fail(f"zombie: {node.name} dispatched {key} although {owner} claimed the entry since")
        elif any(s == action.session for s, r, _ in earlier[:-1]):
            self._fail(f"{node.name} re-sent {key} twice")

    def _on_publish(self, node: _SimNode, action: Dispatch, oldest_read: int) -> None:
        """The publishing thread of a deferred node: check the lease and ownership, publish, report."""
        if node.core is None:
            return
        if node.status == "paused":
            self._push(self.now + 50, "publish", node.index, node.generation, action, oldest_read)  # frozen process
            return
        local = self._local(node)
        if node.core.can_publish(action.session, action.entry, action.epoch, local):
            self._dispatch(node, action, oldest_read)
            node.core.on_dispatched(action.entry, action.tick)
            if not (self.sc.seed + node.index) % 2:
                # Half the deferred shells confirm at once; the others leave the confirmations to gather in the
                # core (KafkaScheduler flushes every 20 ms), which then appends them on a later timer.
                self._execute(node, node.core.flush_acks(local))
        else:
            self._log(f"{node.name} did not publish {action.entry}@{action.tick}: no longer its owner")
            node.core.on_dispatch_failed(action.entry, action.tick, action.session)
        if node.status == "up":
            self._after_step(node)

    # -- events -----------------------------------------------------------------------------------------------

    def _on_append(self, value: bytes) -> None:
        if self.now < self.broker_stalled_until:
            self._push(self.broker_stalled_until + self.rng.randint(0, 5), "append", value)
            return
        try:
            record: wire.Record | None = wire.decode(value)
        except wire.WireError:
            record = None
        rec = _LogRecord(len(self.log), self.now + self.broker_offset, self.now, value, record)
        self.log.append(rec)
        self.report.records += 1
        outcome = self.oracle.apply(rec.offset, rec.ts, record)
        if isinstance(record, wire.Decide):
            for item in outcome.decided:
                key = (item.entry, item.tick)
                if key in self.decisions:
                    self._fail(f"tick {key} validly decided twice (offsets {self.decisions[key][2]}, {rec.offset})")
                self.decisions[key] = (record.session, item.epoch, rec.offset, rec.ts)
                self.report.decided += 1
        for node in self.nodes:
            if node.status != "down":
                self._push(self.now + node.read_delay, "read", node.index, node.generation)

    def _on_read(self, node: _SimNode) -> None:
        if node.status == "down" or node.core is None:
            return
        if node.status == "paused" or self.now < node.stalled_until:
            return  # resumed by the fault's end event
        if node.read_pos < self.log_start:
            self._log(f"{node.name} fell behind the cleaner; restarting from the snapshot")
            self._execute(node, node.core.abandon(self._local(node)))
            self._start(node)
            return
        local = self._local(node)
        actions: list[Action] = []
        while node.read_pos < len(self.log) and self.log[node.read_pos].appended_at + node.read_delay <= self.now:
            rec = self.log[node.read_pos]
            node.read_pos += 1
            node.read_times.append(self.now)
            actions += node.core.on_record(rec.offset, rec.ts, rec.record, local)
        caught_up = node.read_pos == len(self.log) and self.rng.random() < 0.05
        if caught_up and node.core.state.to_json() != self.oracle.to_json():
            self._fail(f"{node.name} caught up with the log but its state differs from the oracle's")
        actions += node.core.on_timer(local)
        self._execute(node, actions)
        self._after_step(node)

    def _on_timer(self, node: _SimNode) -> None:
        if node.status != "up" or node.core is None or self.now < node.stalled_until:
            return
        self._execute(node, node.core.on_timer(self._local(node)))
        self._after_step(node)

    def _after_step(self, node: _SimNode) -> None:
        assert node.core is not None
        if node.core.stopped:
            self._log(f"{node.name} stopped")
            node.status = "down"
            self._covered()
            node.generation += 1
            return
        if node.stop_deadline is not None and self.now > node.stop_deadline:
            self._log(f"{node.name} did not finish stopping in time; killed")
            node.status = "down"
            self._covered()
            node.generation += 1
            return
        self._arm(node)

    def _on_truncate(self, before: int) -> None:
        if before > self.log_start:
            self._log(f"cleaner drops offsets below {before}")
            self.log_start = before

    # -- faults -----------------------------------------------------------------------------------------------

    def _fault(self) -> None:
        self.last_change = self.now
        kind = self.rng.choice(self.FAULTS)
        up = [n for n in self.nodes if n.status == "up"]
        down = [n for n in self.nodes if n.status == "down"]
        lease = self.sc.settings.lease_ms
        span = self.rng.randint(lease // 2, 3 * lease)
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        self._log(f"fault: {kind}")
        if kind == "crash" and up:
            node = self.rng.choice(up)
            node.status, node.generation = "down", node.generation + 1
            self._covered()
            self._mark(self.now, self.now + lease * 3)
            self._log(f"{node.name} crashed")
        elif kind == "restart" and down:
            self._start(self.rng.choice(down))
        elif kind == "pause" and up:
            node = self.rng.choice(up)
            node.status = "paused"
            self._covered()
            self._mark(self.now, self.now + span + lease * 3)
            self._push(self.now + span, "resume", node.index, node.generation)
        elif kind == "stop" and up:
            node = self.rng.choice(up)
            assert node.core is not None
            node.stop_deadline = self.now + 5 * lease
            if node.deferred:
                # Its goodbye waits for its publishing thread, which may be slow (up to two leases here): ticks
                # that fall due meanwhile may be handed over late. (A fast one, as in KafkaScheduler, takes ms.)
                self._mark(self.now, self.now + 3 * lease)
            self._execute(node, node.core.stop(self._local(node)))
            self._covered()
            self._after_step(node)
        elif kind == "join" and len(self.nodes) < 8:
            self._add_node(frozenset(self.sc.entries))
        elif kind == "schedule_change" and up:
            node = self.rng.choice(up)
            name = f"x{len(self._all_entries)}"
            self._all_entries[name] = self.rng.choice([200, 500, 1000])
            keep = [e for e in sorted(node.entries) if self.rng.random() < 0.8]
            node.entries = frozenset([*keep, name])
            node.status, node.generation = "down", node.generation + 1
            self._covered()
            self._mark(self.now, self.now + lease * 3)
            self._start(node)
        elif kind == "read_stall" and up:
            node = self.rng.choice(up)
            node.stalled_until = self.now + span
            self._mark(self.now, self.now + span + lease * 3)
            self._push(self.now + span, "resume", node.index, node.generation)
        elif kind == "slow_append" and up:
            node = self.rng.choice(up)
            node.slow_until = self.now + span
            self._mark(self.now, self.now + span + lease * 6)
        elif kind == "lossy_append" and up:
            node = self.rng.choice(up)
            node.lossy_until = self.now + span
            self._mark(self.now, self.now + span + lease * 3)
        elif kind == "broker_stall":
            self.broker_stalled_until = self.now + span
            self._mark(self.now, self.now + span + lease * 3)
        elif kind == "broker_clock_jump":
            jump = self.rng.choice([-1, 1]) * self.rng.randint(lease // 2, 60_000)
            self.broker_offset += jump
            self.any_jump = True
            if jump > 0:
                self.jumps.append(self.now)
            self._mark(self.now, self.now + abs(jump) + lease * 3)

    def _mark(self, start: int, end: int) -> None:
        self.faults.append((start, end))

    def _on_resume(self, node: _SimNode) -> None:
        if node.status == "paused":
            node.status = "up"
            self._covered()
            if self.rng.random() < 0.5:
                # A resumed process carries on wherever it stopped: often its timer fires before it reads what
                # the others wrote meanwhile. Only its own lease clock stops it from acting on a stale view then.
                self._on_timer(node)
        self._on_read(node)

    # -- running ----------------------------------------------------------------------------------------------

    def run(self) -> Report:
        sc = self.sc
        self._push(self.rng.randint(0, 100), "fault_tick")
        handled = same_time = 0
        tail_end: int | None = None  # after the event budget: no new faults until then, so that things settle
        while self.queue:
            if handled >= sc.events and tail_end is None:
                # A fault acts for at most three leases (see _fault); then give the nodes time to settle.
                settle = 3 * sc.settings.lease_ms + sc.settings.lease_ms + 3 * sc.settings.heartbeat_ms
                tail_end = max(self.last_change, self.now) + settle
            if tail_end is not None and self.queue[0][0] > tail_end:
                break
            at, _seq, kind, args = heapq.heappop(self.queue)
            same_time = same_time + 1 if at <= self.now else 0
            if same_time > 20_000:
                self._fail(f"no progress: events keep firing at sim time {self.now} ({kind}): a busy loop")
            self.now = max(self.now, at)
            handled += 1
            if kind == "append":
                assert isinstance(args[0], bytes)
                self._on_append(args[0])
            elif kind == "truncate":
                assert isinstance(args[0], int)
                self._on_truncate(args[0])
            elif kind == "fault_tick":
                if tail_end is None and self.rng.random() < sc.fault_rate * 20:
                    self._fault()
                if not any(n.status != "down" for n in self.nodes):
                    self._start(self.rng.choice(self.nodes))
                self._push(self.now + self.rng.randint(50, 400), "fault_tick")
            else:
                node = self.nodes[int(str(args[0]))]
                if args[1] != node.generation:
                    continue  # an event of an earlier life of this node
                if kind == "read":
                    self._on_read(node)
                elif kind == "timer":
                    if args[2] != node.timer_at:
                        continue  # superseded by an earlier timer
                    node.timer_at = None
                    self._on_timer(node)
                elif kind == "resume":
                    self._on_resume(node)
                elif kind == "publish":
                    assert isinstance(args[2], Dispatch)
                    assert isinstance(args[3], int)
                    self._on_publish(node, args[2], args[3])
        self.report.events = handled
        self.report.sim_ms = self.now
        self._check_ticks()
        self._check_settled()
        return self.report

    def _check_settled(self) -> None:
        """After a long quiet stretch, every live node owns exactly the entries the assignment gives it."""
        s = self.sc.settings
        quiet = s.lease_ms + 3 * s.heartbeat_ms
        if self.any_jump or self.now - self.last_change < quiet or not self._calm(self.now - quiet, self.now):
            return
        ups = [n for n in self.nodes if n.status == "up" and n.core is not None and n.core.live]
        if not ups or any(n.core is None or n.core.stopping for n in ups):
            return
        self.report.settled_checked += 1
        for n in ups:
            assert n.core is not None
            owned = self.oracle.owned.get(n.core.session or "", set())
            if owned != set(n.core._desired):
                self._fail(
                    f"{n.name} owns {sorted(owned)} but should own {sorted(n.core._desired)} after "
                    f"{self.now - self.last_change} quiet ms"
                )

    def _calm(self, start: int, end: int) -> bool:
        return not any(fs < end and start < fe for fs, fe in self.faults)

    def _check_ticks(self) -> None:
        """Liveness in calm stretches, and the catch-up policy for every skipped tick."""
        s = self.sc.settings
        recover = 2 * s.lease_ms + 3 * s.heartbeat_ms + 200
        threshold = s.catchup_window_ms if s.catchup is CatchUp.ALL else s.catchup_grace_ms
        schedule = IntervalSchedule(self._all_entries)
        by_entry: dict[str, list[tuple[int, int]]] = {}
        for (entry, tick), (_s, _e, _o, ts) in self.decisions.items():
            by_entry.setdefault(entry, []).append((tick, ts))
        end = self.now - recover
        for entry, decided in by_entry.items():
            decided.sort()
            for (t_a, _), (t_b, dec_b) in itertools.pairwise(decided):
                skipped = first_skipped = schedule.next_tick(entry, t_a, t_a)
                while skipped is not None and skipped < t_b:
                    self.report.skipped_ticks += 1
                    # ONCE collapses a gap that starts with an overdue tick into its latest tick.
                    judged = first_skipped if s.catchup is CatchUp.ONCE else skipped
                    assert judged is not None
                    if not self.any_jump and judged >= dec_b - threshold + _TOLERANCE_MS + s.decision_lead_ms:
                        self._fail(
                            f"tick ({entry}, {skipped}) was skipped but was not overdue by {threshold} ms when "
                            f"tick {t_b} was decided (policy {s.catchup.value})"
                        )
                    skipped = schedule.next_tick(entry, t_a, skipped)
        # At-least-once: every decided tick is published by someone in the end (the tail gives the time), unless
        # no live node can run its entry any more.
        if s.delivery is DeliveryMode.AT_LEAST_ONCE and not self.any_jump:
            runnable_now = self.coverage[-1][1]
            for (entry, tick), (_s, _e, _o, ts) in self.decisions.items():
                if (
                    entry in runnable_now
                    and ts - self.broker_offset < self.last_change
                    and (entry, tick) not in (self.dispatched)
                ):
                    self._fail(f"tick ({entry}, {tick}) was decided (at-least-once) but never published")
                    return
        # Calm stretches: every tick of an entry that some up node can run must be decided, within grace.
        if self.any_jump:
            return  # broker time and sim time part ways after a jump: lateness is not comparable
        decided_keys = self.decisions
        for entry, period in self._all_entries.items():
            first = min((t for (e, t) in decided_keys if e == entry), default=None)
            if first is None:
                continue
            tick = first
            while tick < end + self.broker_offset:
                sim_tick = tick - self.broker_offset
                if self._calm(sim_tick - recover, sim_tick + s.catchup_grace_ms) and self._runnable(
                    entry, sim_tick - recover, sim_tick + s.catchup_grace_ms
                ):
                    self.report.checked_calm_ticks += 1
                    got = decided_keys.get((entry, tick))
                    if got is None:
                        self._fail(f"tick ({entry}, {tick}) fell due in a calm stretch but was never decided")
                        return
                    lateness = got[3] - tick
                    if lateness > s.catchup_grace_ms:
                        self._fail(f"tick ({entry}, {tick}) decided {lateness} ms late in a calm stretch")
                    # A deferred publish may take up to two leases (see _execute): calm must last that long too.
                    calm_publish = self._calm(sim_tick, sim_tick + 2 * s.lease_ms + s.catchup_grace_ms)
                    if calm_publish and (entry, tick) not in self.dispatched:
                        self._fail(f"tick ({entry}, {tick}) was decided in a calm stretch but never published")
                        return
                tick += period

    def _covered(self) -> None:
        # A stopping node makes no new decisions: it no longer covers its entries.
        entries = frozenset(
            e for n in self.nodes if n.status == "up" and n.core is not None and not n.core.stopping for e in n.entries
        )
        if entries != self.coverage[-1][1]:
            self.coverage.append((self.now, entries))

    def _runnable(self, entry: str, start: int, end: int) -> bool:
        """Whether some up node could run ``entry`` throughout [start, end] (sim time)."""
        before = [c for t, c in self.coverage if t <= start]
        during = [c for t, c in self.coverage if start < t <= end]
        return all(entry in c for c in [before[-1], *during])


def run_range(first: int, count: int, events: int) -> tuple[int, int, dict[str, int]]:
    """Run seeds ``first .. first + count - 1``; return (scenarios, events, faults injected by kind).

    Raises :class:`InvariantViolation` on the first broken invariant. Top-level so that process pools can run it.
    """
    handled = 0
    faults: dict[str, int] = {}
    for seed in range(first, first + count):
        report = run_seed(seed, events)
        handled += report.events
        for kind, n in report.faults.items():
            faults[kind] = faults.get(kind, 0) + n
    return count, handled, faults


def run_seed(seed: int, events: int = 1000, verbose: bool = False) -> Report:
    trace = print if verbose else None
    return Simulation(make_scenario(seed, events), trace=trace).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run seeded protocol simulations (a soak when given many).")
    parser.add_argument("--seed", type=int, help="run only this seed (replay)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--minutes", type=float, help="keep running fresh seeds for this long (soak)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        print(run_seed(args.seed, args.events, args.verbose).line())
        return 0
    started = time.monotonic()
    seed, done = args.first, 0
    while True:
        if args.minutes is not None:
            if time.monotonic() - started > args.minutes * 60:
                break
        elif done >= args.count:
            break
        try:
            run_seed(seed, args.events)
        except InvariantViolation as exc:
            print(exc, file=sys.stderr)
            return 1
        seed, done = seed + 1, done + 1
    print(f"{done} scenarios (seeds {args.first}..{seed - 1}) of {args.events} events: no invariant violated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
