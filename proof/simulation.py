"""A deterministic simulator of many nodes on one simulated partition, with faults, checked against invariants.

Everything here runs in simulated time from seeded random generators, so a scenario replays exactly from its
seed: ``python -m proof.simulation --seed N -v``. The nodes are real :class:`NodeCore` instances (and
:class:`Bootstrap` / :class:`Waiter` while they start); the log, the brokers and their clocks, the network, the
cleaner, the operator and an adversary are simulated. Half the nodes publish like KafkaScheduler, in another thread:
some time after the core hands a tick over they check ``can_publish`` and report the outcome.

Faults (``Simulation.FAULTS``): crashes and restarts, pauses longer than the lease, clean stops, joins, schedule
changes, read stalls, slow and lost appends, broker stalls longer than the lease, **partition leader moves between
brokers whose clocks are up to 5 minutes apart** (both directions), **an operator deleting records at an arbitrary
offset**, **an adversary** writing arbitrary bytes and structurally valid but hostile records (random kinds, unknown
sessions, bounds exceeded, snapshot parts that disagree, far-future ``as_of``, forged waits and geneses), **a
replica that can write but not read** (its reads lag beyond the lease) and **a replica that crash-loops right after
its hello**.

After every step the checker verifies:

* every dispatched tick was validly decided in the log by the dispatching session under the same epoch;
* no tick is dispatched earlier than it is due in true time, by more than the read tolerance plus the step
  threshold (``clock_step_ms``), plus the clock offset of a broker that led for at least ``clock_hold_ms`` without
  a break (nodes adopt a step that lasts that long): the only clock exemption, bounded and stated;
* no tick is decided twice, and none is dispatched twice (in at-least-once mode only re-sends of another node's
  decided tick may repeat it);
* at the moment of a dispatch no other session holds a later valid claim on the entry (no zombie; no exemption);
* a node that starts from what the cleaner and the operator left computes exactly the state of the oracle (which
  folded every record), and so does every running node that has caught up with the log;
and at the end of the run, which closes with a fault-free stretch:
* every live node owns exactly the entries the assignment gives it (the ownership has settled);
* every tick due in a calm stretch (no fault within the recovery bound) of an entry that a healthy node could run
  was decided within the grace period, and published. A replica that crash-loops or cannot read is not a fault
  window: healthy owners must lose no tick to it;
* every tick that was skipped was overdue by the catch-up policy's threshold when a later tick was decided;
* in at-least-once mode every decided tick was published, except ticks decided before a genesis (which forgets
  unconfirmed ticks, by design).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.actions import Action, Append, Dispatch, Note, Truncate
from celery_kafka_beat.protocol.assignment import Balancer
from celery_kafka_beat.protocol.bootstrap import Bootstrap, Waiter
from celery_kafka_beat.protocol.node import NodeCore, NodeSettings
from celery_kafka_beat.protocol.planning import CatchUp, DeliveryMode
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.protocol.state import ClusterState, FoldRules, catalog_digest

#: A decision's broker-time estimate may run ahead of the broker by the smallest append latency; allow it.
_TOLERANCE_MS: Final = 50
#: Three brokers; broker 0's clock is true, the others' may be off.
_BROKERS: Final = 3
#: Broker clocks off by more than this are "wrong"; up to it, NTP noise (followed, within the tolerance).
_NOISE_MS: Final = 20
#: A crash-looping node lives at most this long after each start.
_LOOP_LIFE_MS: Final = 60


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
    boot: Bootstrap | None = None
    waiter: Waiter | None = None
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
    deaf_until: int = 0
    """Until then the node can write but reads only what was appended more than ``deaf_lag`` ago."""
    deaf_lag: int = 0
    loop_until: int = 0
    """A crash-looping node: until then it is killed soon after each start, and started again."""
    """Whether the node read a record of a ready peer holding a clock step since it started (_early_allowance)."""
    deferred: bool = False
    """Publishes in another thread, like KafkaScheduler: a tick is checked (can_publish) and published some time
    after the core handed it over, and reported back then."""

    slow: bool = False
    """A slow reader (lag below the lease), not a deaf one: it stays up and useful."""

    def sick(self, now: int) -> bool:
        return (now < self.deaf_until and not self.slow) or now < self.loop_until


@dataclass
class Scenario:
    """The knobs of one run, all drawn from the seed."""

    seed: int
    nodes: int
    entries: dict[str, int]
    settings: NodeSettings
    rules: FoldRules
    clocks: tuple[int, ...]
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
    balance_checked: int = 0
    hostile_records: int = 0
    geneses: int = 0
    waits: int = 0

    def line(self) -> str:
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (
            f"seed={self.seed} events={self.events} sim_ms={self.sim_ms} records={self.records} "
            f"decided={self.decided} dispatched={self.dispatches} resends={self.resends} "
            f"calm_ticks_checked={self.checked_calm_ticks} skipped={self.skipped_ticks} "
            f"restart_checks={self.restarts_checked} settled_checks={self.settled_checked} "
            f"balance_checks={self.balance_checked} "
            f"hostile={self.hostile_records} waits={self.waits} geneses={self.geneses} faults[{faults}]"
        )


def make_scenario(seed: int, events: int = 1000, delivery: DeliveryMode | None = None) -> Scenario:
    rng = random.Random(seed)
    lease = rng.choice([300, 500, 1000, 2000])
    hb = max(10, lease // rng.choice([3, 4, 5, 8]))
    entries = {f"e{i}": rng.choice([100, 200, 250, 500, 1000, 1500]) for i in range(rng.randint(1, 8))}
    step = rng.choice([200, 500, 1000])
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
        decide_batch_ms=rng.choice([0, None]),
        probation_ms=rng.choice([0, lease // 2, lease, 2 * lease]),
        clock_step_ms=step,
        clock_hold_ms=rng.choice([2000, 5000, 20_000]),
        max_record_bytes=rng.choice([4096, 1_000_000]),
    )
    # The fold's constants scaled to the scenario: the longest lease twice the nodes' (a genesis waits 2.2 leases).
    rules = FoldRules(max_lease_ms=2 * lease, ended_retention_ms=60_000, catalog_retention_ms=20_000)
    clocks = [0]
    for _ in range(_BROKERS - 1):
        if rng.random() < 0.4:
            clocks.append(rng.randint(-_NOISE_MS, _NOISE_MS))
        else:
            clocks.append(rng.choice([-1, 1]) * rng.randint(2 * step, 300_000))
    return Scenario(
        seed=seed,
        nodes=rng.randint(1, 5),
        entries=entries,
        settings=settings,
        rules=rules,
        clocks=tuple(clocks),
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
        "leader_move",
        "truncate",
        "poison",
        "deaf",
        "slow_reader",
        "crash_loop",
    )

    def __init__(self, scenario: Scenario, trace: Callable[[str], None] | None = None) -> None:
        self.sc = scenario
        self.rules = scenario.rules
        self.rng = random.Random(scenario.seed * 7919 + 1)
        # Separate generators for the publishing thread's delays and for the adversary's records, so that either
        # can change without moving the other draws.
        self.shell_rng = random.Random(scenario.seed * 104729 + 3)
        self.adv_rng = random.Random(scenario.seed * 15485863 + 5)
        self.trace = trace
        self.now = 0
        self.log: list[_LogRecord] = []
        self.log_start = 0
        self.base_offset = self.rng.randint(0, 10**12)  # true broker epoch ms, arbitrary
        self.leader = 0
        self.leadership: list[tuple[int, int]] = [(0, 0)]  # (sim time, leader) changes
        self.broker_stalled_until = 0
        self.oracle = ClusterState(rules=self.rules)
        self.decisions: dict[tuple[str, int], tuple[str, int, int, int]] = {}  # -> session, epoch, offset, ts
        self.dispatched: dict[tuple[str, int], list[tuple[str, bool, int]]] = {}
        self.queue: list[tuple[int, int, str, tuple[object, ...]]] = []
        self._seq = 0
        self.nodes: list[_SimNode] = []
        self.faults: list[tuple[int, int]] = []  # intervals of sim time during which faults act
        self.coverage: list[tuple[int, frozenset[str]]] = [(-(10**18), frozenset())]  # entries healthy nodes run
        self.report = Report(seed=scenario.seed)
        self.last_change = 0  # sim time of the latest fault or start: membership and timing may change then
        self.geneses: list[int] = []  # offsets of valid geneses (the oracle's)
        self._lonely_clocks: set[int] = {0}  # broker clock offsets read by nodes not yet joined to a peer's hold
        self._lonely_takeups: list[tuple[int, int]] = []  # (sim time appended, clock) of wrong clocks among them
        self._entry_faults: list[tuple[int, int, frozenset[str]]] = []  # faults of one node: (start, end, entries)
        self._sessions = 0
        self._all_entries = dict(scenario.entries)
        for _ in range(scenario.nodes):
            self._add_node(frozenset(scenario.entries))

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        raise InvariantViolation(
            f"seed {self.sc.seed} at sim time {self.now} ms: {message}\n"
            f"replay: python -m proof.simulation --seed {self.sc.seed} --events {self.sc.events} -v"
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

    def _broker_ts(self) -> int:
        return self.now + self.base_offset + self.sc.clocks[self.leader]

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
        """A new process: read the topic from its start; start from the state, or wait for one."""
        self.last_change = self.now
        node.status = "up"
        node.generation += 1
        node.timer_at = None
        node.stalled_until = 0  # a new process has a new connection
        node.read_pos = len(self.log)
        node.stop_deadline = None
        node.core = node.waiter = None
        boot = Bootstrap(self.log_start, self.rules)
        local = self._local(node)
        for rec in self.log[self.log_start :]:
            boot.feed(rec.offset, rec.ts, rec.record, local)
        state = boot.finish()
        self._log(f"{node.name} starts with {sorted(node.entries)} at offset {node.read_pos}")
        if state is None:
            node.boot = boot
            node.waiter = Waiter(self._session_id(), self.log_start, self.sc.settings.lease_ms, self.rules)
            self.report.waits += 1
            self._log(f"{node.name} waits: {boot.rejected}")
            self._covered()
            self._execute(node, node.waiter.start(self._local(node)))
        else:
            self._begin(node, state, boot)
        if node.loop_until > self.now:
            # A crash-looping process dies soon after its hello was appended (before its probation ends).
            self._push(self.now + self.rng.randint(5, _LOOP_LIFE_MS), "loop_crash", node.index, node.generation)
        self._arm(node)

    def _begin(self, node: _SimNode, state: ClusterState, boot: Bootstrap) -> None:
        if node.read_pos == len(self.log) and state.to_json() != self.oracle.to_json():
            self._fail(f"{node.name} rebuilt a state from the topic that differs from the oracle's")
        self.report.restarts_checked += 1
        settings = dataclasses.replace(self.sc.settings, node=node.name)
        periods = {e: self._all_entries[e] for e in node.entries}
        core = NodeCore(settings, node.entries, IntervalSchedule(periods), self._session_id, state, rules=self.rules)
        node.core, node.boot, node.waiter = core, None, None
        self._execute(node, core.prime_clock(boot.recent))
        self._covered()
        self._execute(node, core.start(self._local(node)))

    def _arm(self, node: _SimNode) -> None:
        if node.status == "down":
            return
        if node.core is not None:
            local_wake = node.core.next_wakeup(self._local(node))
        elif node.waiter is not None:
            local_wake = node.waiter.next_wakeup(self._local(node))
        else:
            return
        wake = self._sim_time(node, local_wake)
        if node.timer_at is not None and self.now < node.timer_at <= wake:
            return  # an earlier timer is already pending; it re-arms
        node.timer_at = wake
        self._push(wake, "timer", node.index, node.generation, wake)

    def _execute(self, node: _SimNode, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Append):
                self._send(node, action.record)
            elif isinstance(action, Dispatch):
                assert node.core is not None
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
                        self._mark(self.now, self.now + delay + self.sc.settings.catchup_grace_ms)
                    oldest = node.read_times[0] if node.read_times else 0  # the estimate it was due by
                    allowed = self._early_allowance()  # as things were when the node handed the tick over
                    self._push(self.now + delay, "publish", node.index, node.generation, action, oldest, allowed)
                    continue
                self._dispatch(node, action)
                node.core.on_dispatched(action.entry, action.tick, action.session)
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

    def _early_allowance(self) -> int:
        """How early (ms, true time) a tick may go out now: the step threshold (smaller changes are followed at
        once), plus the offset of any broker clock that led for ``clock_hold_ms`` without a break (the nodes adopt
        it), or that a node's time line was built from before it read a ready peer holding a step (a node starting
        during a step with no peer holding it takes the broker's clock as it is; others may join its hold later)."""
        s = self.sc.settings
        adopted = max(self._lonely_clocks)
        for (start, leader), (end, _) in itertools.pairwise([*self.leadership, (self.now, -1)]):
            if end - start >= s.clock_hold_ms - 2 * s.lease_ms:
                adopted = max(adopted, self.sc.clocks[leader])
        return s.clock_step_ms + adopted

    def _dispatch(
        self, node: _SimNode, action: Dispatch, oldest_read: int | None = None, allowed: int | None = None
    ) -> None:
        key = (action.entry, action.tick)
        self.report.dispatches += 1
        self.report.resends += action.resend
        earlier = self.dispatched.setdefault(key, [])
        earlier.append((action.session, action.resend, self.now))
        # Node clocks run up to 0.5 % fast here, so the estimate may run ahead by that much since the oldest record
        # it is built from (real clocks drift by parts per million).
        if oldest_read is None:
            oldest_read = node.read_times[0] if node.read_times else 0
        early_tolerance = 2 + int(0.006 * (self.now - oldest_read))
        true_now = self.now + self.base_offset
        if allowed is None:
            allowed = self._early_allowance()
        if true_now + early_tolerance + allowed < action.tick:
            self._fail(f"{node.name} dispatched {key} {action.tick - true_now} ms early (true time)")
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
            if owner is not None and owner[0] != action.session and owner[1] > action.epoch:
                self._fail(f"zombie: {node.name} dispatched {key} although {owner} claimed the entry since")
        elif any(s == action.session for s, r, _ in earlier[:-1]):
            self._fail(f"{node.name} re-sent {key} twice")

    def _on_publish(self, node: _SimNode, action: Dispatch, oldest_read: int, allowed: int) -> None:
        """The publishing thread of a deferred node: check the lease and ownership, publish, report."""
        if node.core is None:
            return
        if node.status == "paused":  # a frozen process
            self._push(self.now + 50, "publish", node.index, node.generation, action, oldest_read, allowed)
            return
        local = self._local(node)
        if node.core.can_publish(action.session, action.entry, action.epoch, local):
            self._dispatch(node, action, oldest_read, allowed)
            node.core.on_dispatched(action.entry, action.tick, action.session)
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

    def _on_append(self, value: bytes, hostile: bool = False) -> None:
        if self.now < self.broker_stalled_until:
            # Held until the stall ends, then appended in the order they arrived: a producer's records keep their
            # order (idempotent producer), whatever the broker does.
            self._push(self.broker_stalled_until, "append", value, hostile)
            return
        try:
            record: wire.Record | None = wire.decode(value)
        except wire.WireError:
            record = None
        rec = _LogRecord(len(self.log), self._broker_ts(), self.now, value, record)
        self.log.append(rec)
        self.report.records += 1
        outcome = self.oracle.apply(rec.offset, rec.ts, record)
        if isinstance(record, wire.Genesis) and outcome.valid:
            self.geneses.append(rec.offset)
            self.report.geneses += 1
            self._log(f"genesis at offset {rec.offset} ({'forged' if hostile else 'by a waiter'})")
            if hostile:
                self._mark(self.now, self.now + self._recovery_after_genesis())
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
        if node.status == "down" or (node.core is None and node.waiter is None):
            return
        if node.status == "paused" or self.now < node.stalled_until:
            return  # resumed by the fault's end event
        if node.read_pos < self.log_start:
            self._log(f"{node.name} fell behind the deletion; reading the topic again")
            if node.core is not None:
                self._execute(node, node.core.abandon(self._local(node)))
            self._start(node)
            return
        local = self._local(node)
        lag = node.deaf_lag if self.now < node.deaf_until else 0
        actions: list[Action] = []
        while node.read_pos < len(self.log) and self.log[node.read_pos].appended_at + node.read_delay + lag <= self.now:
            rec = self.log[node.read_pos]
            node.read_pos += 1
            node.read_times.append(self.now)
            if node.core is not None:
                provisional = node.core.clock.provisional
                actions += node.core.on_record(rec.offset, rec.ts, rec.record, local)
                if provisional and not node.core.clock.provisional and not node.core.clock.holding:
                    # The node's first own record set its time line (see BrokerClock.prime), and it joined no
                    # peer's hold: it took the brokers' clock of the moment (any later step it witnesses, and holds).
                    clock = rec.ts - rec.appended_at - self.base_offset
                    self._lonely_clocks.add(clock)
                    if abs(clock) > _NOISE_MS:
                        self._lonely_takeups.append((rec.appended_at, clock))
                continue
            assert node.boot is not None
            assert node.waiter is not None
            ready = node.boot.feed(rec.offset, rec.ts, rec.record, local)
            node.waiter.on_record(rec.offset, rec.ts, rec.record, local)
            if ready and (state := node.boot.finish()) is not None:
                self._log(f"{node.name} rebuilt the state at offset {rec.offset}")
                self._begin(node, state, node.boot)
                assert node.core is not None
                actions += node.core.on_timer(local)
        if node.core is not None:
            caught_up = node.read_pos == len(self.log) and self.rng.random() < 0.05
            if caught_up and node.core.state.to_json() != self.oracle.to_json():
                self._fail(f"{node.name} caught up with the log but its state differs from the oracle's")
            actions += node.core.on_timer(local)
        elif node.waiter is not None:
            actions += node.waiter.on_timer(local)
        self._execute(node, actions)
        self._after_step(node)

    def _on_timer(self, node: _SimNode) -> None:
        if node.status != "up" or self.now < node.stalled_until:
            return
        if node.core is not None:
            self._execute(node, node.core.on_timer(self._local(node)))
        elif node.waiter is not None:
            self._execute(node, node.waiter.on_timer(self._local(node)))
        self._after_step(node)

    def _after_step(self, node: _SimNode) -> None:
        if node.core is not None and node.core.stopped:
            self._log(f"{node.name} stopped")
            self._down(node)
            return
        if node.stop_deadline is not None and self.now > node.stop_deadline:
            self._log(f"{node.name} did not finish stopping in time; killed")
            self._down(node)
            return
        self._arm(node)

    def _down(self, node: _SimNode) -> None:
        node.status = "down"
        node.generation += 1
        self._covered()

    def _on_truncate(self, before: int) -> None:
        if before > self.log_start:
            self._log(f"records below offset {before} deleted")
            self.log_start = min(before, len(self.log))

    # -- the adversary ----------------------------------------------------------------------------------------

    def _hostile_values(self) -> list[bytes]:
        """One burst of poison: arbitrary bytes, JSON that breaks parsers, and well-formed records that lie."""
        r = self.adv_rng
        sid, ghost = f"x{r.randrange(10**6)}", f"g{r.randrange(10**6)}"
        known = sorted(self.oracle.sessions) or ["s1"]
        offset = len(self.log)
        ts = self._broker_ts()
        bodies: list[object] = [
            {"ckb": 2, "k": r.choice(wire.KINDS), "s": sid, "q": 1, "i": [["e0", 10**30, 1]]},
            {"ckb": 2, "k": "snap", "s": sid, "q": 1, "id": "x", "as_of": 10**12, "p": 0, "n": 1, "data": "{}"},
            {"ckb": 2, "k": "snap", "s": sid, "q": 1, "id": "y", "as_of": offset - 1, "p": 0, "n": 2, "data": "{"},
            {"ckb": 2, "k": "snap", "s": sid, "q": 2, "id": "y", "as_of": offset - 1, "p": 1, "n": 3, "data": "}"},
            {
                "ckb": 2,
                "k": "snap",
                "s": sid,
                "q": 3,
                "id": "z",
                "as_of": offset - 1,
                "p": 0,
                "n": 1,
                "data": '{"v":2,"offset":Infinity}',
            },
            {"ckb": 2, "k": "catalog", "s": sid, "q": 1, "d": "d", "p": 0, "n": 1, "data": "[" * 5000},
            {"ckb": 2, "k": "catalog", "s": sid, "q": 1, "d": "d", "p": 0, "n": 1, "data": "[" + "9" * 5000 + "]"},
            {"ckb": 2, "k": "claim", "s": sid, "q": 1, "e": sorted(self._all_entries)},
            {"ckb": 2, "k": "expire", "s": sid, "q": 1, "i": [[s, r.randrange(offset + 1)] for s in known]},
            {"ckb": 2, "k": "published", "s": sid, "q": 1, "i": [[e, ts] for e in self._all_entries]},
            {"ckb": 2, "k": "ready", "s": sid, "q": 1},
            {"ckb": 2, "k": "bye", "s": sid, "q": 1},
            {"ckb": 2, "k": "wait", "s": sid, "q": 1, "low": r.randrange(offset + 1)},
            {"ckb": 2, "k": "genesis", "s": sid, "q": 2, "from": r.randrange(offset + 1), "el": 10**9, "floor": ts},
            {"ckb": 2, "k": "hello", "s": sid, "q": 1, "node": "x", "lease": 10**9, "cat": "d"},
            {"ckb": 3, "k": "hb", "s": sid, "q": 1},
            {"ckb": 1, "k": "ready", "s": sid, "q": 1},
            {"ckb": 2, "k": "hb", "s": sid, "q": 1, "w": 2**64},
            [[[]]],
            None,
        ]
        values = [json.dumps(b).encode() for b in r.sample(bodies, r.randint(3, len(bodies)))]
        values.append(b'{"ckb":2,"k":"hb","s":"x","q":' + b"1" * 5000 + b"}")  # json.loads: ValueError
        values.append(
            b'{"ckb":2,"k":"snap","s":"x","q":1,"id":"i","as_of":1,"p":0,"n":1,"data":"' + b"9" * 5000 + b'"}'
        )
        values.append(b"[" * 100_000)
        values.append(r.randbytes(r.randint(0, 200)))
        values.append(b'{"ckb":2,"k":"hb","s":"x","q":1e999999}')
        values.append(b'{"ckb":2,"k":"hb","s":"x","q":NaN}')
        if r.random() < 0.3:
            # A hello that lives: a session that never says ready, never claims and falls silent (it is voted out).
            digest, data = catalog_digest(sorted(self._all_entries))
            cat = {"ckb": 2, "k": "catalog", "s": ghost, "q": 5, "d": digest, "p": 0, "n": 1, "data": data}
            hello = {
                "ckb": 2,
                "k": "hello",
                "s": ghost,
                "q": 6,
                "node": "ghost",
                "lease": self.sc.settings.lease_ms,
                "cat": digest,
            }
            values += [json.dumps(cat).encode(), json.dumps(hello).encode()]
        r.shuffle(values)
        return values

    # -- faults -----------------------------------------------------------------------------------------------

    def _recovery_after_genesis(self) -> int:
        s = self.sc.settings
        return self.rules.genesis_quiet_ms + 6 * s.lease_ms + s.probation_ms + s.catchup_grace_ms

    def _fault(self) -> None:
        self.last_change = self.now
        kind = self.rng.choice(self.FAULTS)
        up = [n for n in self.nodes if n.status == "up" and not n.sick(self.now)]
        down = [n for n in self.nodes if n.status == "down" and not n.sick(self.now)]
        s = self.sc.settings
        lease = s.lease_ms
        span = self.rng.randint(lease // 2, 3 * lease)
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        self._log(f"fault: {kind}")
        if kind == "crash" and up:
            node = self.rng.choice(up)
            self._down(node)
            self._mark(self.now, self.now + lease * 3 + s.probation_ms)
            self._log(f"{node.name} crashed")
        elif kind == "restart" and down:
            self._start(self.rng.choice(down))
        elif kind == "pause" and up:
            node = self.rng.choice(up)
            node.status = "paused"
            self._covered()
            self._mark(self.now, self.now + span + lease * 3 + s.probation_ms)
            self._push(self.now + span, "resume", node.index, node.generation)
        elif kind == "stop" and up:
            node = self.rng.choice(up)
            if node.core is None:
                self._down(node)
                return
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
            self._down(node)
            self._mark(self.now, self.now + lease * 3 + s.probation_ms)
            self._start(node)
        elif kind == "read_stall" and up:
            node = self.rng.choice(up)
            node.stalled_until = self.now + span
            self._mark(self.now, self.now + span + lease * 3 + s.probation_ms)
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
            self._mark(self.now, self.now + span + lease * 3 + s.probation_ms)
        elif kind == "leader_move":
            # No fault window: a leader moving to a broker whose clock is off must cost nothing unless it stays
            # longer than clock_hold_ms (then the nodes adopt its clock: see _adoption_windows).
            self.leader = self.rng.choice([b for b in range(_BROKERS) if b != self.leader])
            self.leadership.append((self.now, self.leader))
            self._log(f"partition leader moves to broker {self.leader} (clock {self.sc.clocks[self.leader]:+d} ms)")
        elif kind == "truncate" and len(self.log) > self.log_start:
            # An operator's DeleteRecords (or a retention set by hand) at an arbitrary offset.
            before = self.rng.randint(self.log_start + 1, len(self.log))
            self._log(f"operator deletes the records below offset {before}")
            self.log_start = before
            self._mark(self.now, self.now + self._recovery_after_genesis())
        elif kind == "poison":
            values = self._hostile_values()
            self.report.hostile_records += len(values)
            for value in values:
                self._push(self.now + self.adv_rng.randint(0, lease), "append", value, True)
            # A ghost session (a hello and nothing after) may be given entries while no session is ready, until
            # it is voted out.
            self._mark(self.now, self.now + lease + self.rules.max_lease_ms + 3 * lease)
        elif kind == "deaf" and up:
            # Can write but not read: its reads lag beyond its lease (it keeps sending hellos). Only the entries it
            # owns now may lose ticks; nothing else may.
            node = self.rng.choice(up)
            node.slow = False
            node.deaf_until = self.now + 3 * span
            node.deaf_lag = self.rng.randint(lease, 3 * lease)
            self._covered()
            self._mark_owned(node, self.now + 3 * span + 3 * lease + s.probation_ms)
            self._push(node.deaf_until, "resume", node.index, node.generation)
        elif kind == "slow_reader" and up:
            # Reads lag, but less than the lease: it stays live and votes from a stale view (only a vote naming a
            # session's latest record counts). Its own ticks may run late.
            node = self.rng.choice(up)
            node.deaf_until = self.now + 3 * span
            node.deaf_lag = self.rng.randint(lease // 10, lease // 2)
            node.slow = True
            self._mark(self.now, node.deaf_until + 3 * lease + s.probation_ms)
            self._push(node.deaf_until, "resume", node.index, node.generation)
        elif kind == "crash_loop":
            # A replica that dies soon after each start (before its probation ends), again and again.
            if len(self.nodes) < 8 and self.rng.random() < 0.5:
                node = _SimNode(
                    index=len(self.nodes),
                    name=f"n{len(self.nodes)}",
                    entries=frozenset(self.sc.entries),
                    rate=1.0,
                    skew=0,
                    read_delay=self.rng.randint(1, 15),
                )
                self.nodes.append(node)
            elif down:
                node = self.rng.choice(down)
            else:
                return
            node.loop_until = self.now + 4 * span + s.probation_ms
            if s.probation_ms <= _LOOP_LIFE_MS:
                # Without a probation longer than its life, a crash-looping node does take entries: only then is
                # it a fault that may cost ticks.
                self._mark(self.now, node.loop_until + 3 * lease)
            self._start(node)

    def _mark(self, start: int, end: int) -> None:
        self.faults.append((start, end))

    def _mark_owned(self, node: _SimNode, end: int) -> None:
        """A fault of one node: only the entries it owns may lose ticks (recorded as a window for those)."""
        session = node.core.session if node.core is not None else None
        owned = self.oracle.owned.get(session or "", set())
        if owned:
            self._entry_faults.append((self.now, end, frozenset(owned)))

    def _on_resume(self, node: _SimNode) -> None:
        if node.status == "paused":
            node.status = "up"
            self._covered()
            if self.rng.random() < 0.5:
                # A resumed process carries on wherever it stopped: often its timer fires before it reads what
                # the others wrote meanwhile. Only its own lease clock stops it from acting on a stale view then.
                self._on_timer(node)
        self._covered()
        self._on_read(node)

    def _on_loop_crash(self, node: _SimNode) -> None:
        self._log(f"{node.name} crash-loops: killed")
        self._down(node)
        if self.now < node.loop_until:
            self._push(self.now + self.rng.randint(20, 200), "loop_restart", node.index, node.generation)

    # -- running ----------------------------------------------------------------------------------------------

    def run(self) -> Report:
        sc = self.sc
        self._push(self.rng.randint(0, 100), "fault_tick")
        handled = same_time = 0
        tail_end: int | None = None  # after the event budget: no new faults until then, so that things settle
        while self.queue:
            if handled >= sc.events and tail_end is None:
                # Faults act for bounded times (see _fault); then give the nodes time to settle.
                s = sc.settings
                settle = 6 * s.lease_ms + 3 * s.heartbeat_ms + 2 * s.probation_ms
                busy_until = max(
                    [self.last_change, self.now, *(e for _, e in self.faults), *(e for _, e, _ in self._entry_faults)]
                )
                # A crash loop or a deaf node ends before the tail, which must then last long enough to settle.
                sick_until = max([0, *(max(n.loop_until, n.deaf_until) for n in self.nodes)])
                busy_until = max(busy_until, sick_until + 3 * s.lease_ms)
                tail_end = max(self.last_change, self.now, sick_until) + settle
                tail_end = max(tail_end, min(busy_until, self.now + self._recovery_after_genesis()) + settle)
                if self.leader != 0:
                    self.leader = 0  # a broker with a wrong clock does not lead for ever (NTP, preferred leader)
                    self.leadership.append((self.now, 0))
                    tail_end += s.clock_hold_ms + s.lease_ms
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
                self._on_append(args[0], bool(args[1]) if len(args) > 1 else False)
            elif kind == "truncate":
                assert isinstance(args[0], int)
                self._on_truncate(args[0])
            elif kind == "fault_tick":
                if tail_end is None and self.rng.random() < sc.fault_rate * 20:
                    self._fault()
                if not any(n.status != "down" and not n.sick(self.now) for n in self.nodes):
                    down = [n for n in self.nodes if n.status == "down" and not n.sick(self.now)]
                    if down:
                        self._start(self.rng.choice(down))
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
                    assert isinstance(args[4], int)
                    self._on_publish(node, args[2], args[3], args[4])
                elif kind == "loop_crash":
                    self._on_loop_crash(node)
                elif kind == "loop_restart" and self.now < node.loop_until and node.status == "down":
                    self._start(node)
        self.report.events = handled
        self.report.sim_ms = self.now
        self._check_ticks()
        self._check_settled()
        return self.report

    def _check_settled(self) -> None:
        """After a long quiet stretch, every live node owns exactly the entries the assignment gives it."""
        s = self.sc.settings
        quiet = s.lease_ms + 3 * s.heartbeat_ms + s.probation_ms
        if self.now - self.last_change < quiet or not self._calm(self.now - quiet, self.now):
            return
        if any(n.sick(self.now) for n in self.nodes):
            return
        ups = [n for n in self.nodes if n.status == "up" and n.core is not None and n.core.live]
        if not ups or any(n.core is None or n.core.stopping for n in ups):
            return
        if any(n.status == "up" and n.core is None for n in self.nodes):
            return  # a node still waiting for a snapshot
        self.report.settled_checked += 1
        for n in ups:
            assert n.core is not None
            owned = self.oracle.owned.get(n.core.session or "", set())
            if owned != set(n.core._desired):
                self._fail(
                    f"{n.name} owns {sorted(owned)} but should own {sorted(n.core._desired)} after "
                    f"{self.now - self.last_change} quiet ms"
                )
        self._check_balance()

    def _check_balance(self) -> None:
        """Once ownership settled: nothing is left to move (the balancer, asked afresh from the oracle's state,
        gives every entry to its owner) and, when every live node runs the same catalog, the bound holds: no
        session carries more than W/k + w_max, nor more than ceil(n/k) entries when the weights are equal."""
        state = self.oracle
        catalogs = {s.catalog for s in state.sessions.values()}
        if len(catalogs) != 1 or not all(s.ready for s in state.sessions.values()):
            return
        (catalog,) = catalogs
        weights = state.weights.get(catalog)
        if weights is None:
            return
        sessions = frozenset(state.sessions)
        moved = Balancer().moves(weights, dict.fromkeys(weights, sessions), state.owned)
        if moved:
            self._fail(f"ownership settled but the balancer would still move {len(moved)}: {moved[:5]}")
        k, n = len(sessions), len(weights)
        loads = {sid: sum(weights[name] for name in state.owned.get(sid, ())) for sid in sessions}
        total, heaviest = sum(weights.values()), max(weights.values())
        if k * max(loads.values()) > total + k * heaviest:
            self._fail(f"a session carries {max(loads.values())} > W/k + w_max = {total / k + heaviest:.0f}")
        if len(set(weights.values())) == 1:
            most = max(len(state.owned.get(sid, ())) for sid in sessions)
            if most > -(-n // k):
                self._fail(f"a session owns {most} of {n} entries with {k} live: more than ceil(n/k)")
        self.report.balance_checked += 1

    def _calm(self, start: int, end: int, entry: str | None = None) -> bool:
        if any(fs < end and start < fe for fs, fe in self.faults):
            return False
        return entry is None or not any(fs < end and start < fe and entry in es for fs, fe, es in self._entry_faults)

    def _adoption_windows(self) -> None:
        """A broker clock that led for clock_hold_ms without a break is adopted: the time line jumps by its offset
        then, and again back when the nodes adopt the next clock. Ticks in between follow the catch-up policy. The
        same from the moment a node took up a wrong clock with no peer holding a step to join (_early_allowance)
        until the time line is back: the end of that clock's stretch as leader, a hold, and the offset. A clock
        behind true time labels ticks that much earlier than they fall due (ticks are judged by their labels), so
        its window starts that much earlier too: the ticks the line jumps over when it adopts the true clock again
        are labelled from the adoption minus the offset on."""
        s = self.sc.settings
        stretches = list(itertools.pairwise([*self.leadership, (self.now, -1)]))
        for (start, leader), (end, _) in stretches:
            offset = self.sc.clocks[leader]
            if abs(offset) > _NOISE_MS and end - start >= s.clock_hold_ms - 2 * s.lease_ms:
                self._mark(
                    start + s.clock_hold_ms - 2 * s.lease_ms, end + s.clock_hold_ms + abs(offset) + 4 * s.lease_ms
                )
        for at, offset in self._lonely_takeups:
            end = next((e for (b, _), (e, _) in stretches if b <= at < e), self.now)
            self._mark(at - max(0, -offset), end + s.clock_hold_ms + abs(offset) + 4 * s.lease_ms)

    def _line_lag_after(self, at: int) -> int:
        """How far behind true time a time line taken up after ``at`` may run: the largest negative offset among
        the clocks adopted after it (a stretch as leader of at least a hold, less two leases) and those a node
        took up alone after it (see _early_allowance). Bounded by the clocks' offsets (at most 5 minutes)."""
        s = self.sc.settings
        lag = 0
        stretches = list(itertools.pairwise([*self.leadership, (self.now, -1)]))
        for (start, leader), (end, _) in stretches:
            adopted = start + s.clock_hold_ms - 2 * s.lease_ms
            if end - start >= s.clock_hold_ms - 2 * s.lease_ms and adopted >= at:
                lag = max(lag, -self.sc.clocks[leader])
        for taken, offset in self._lonely_takeups:
            if taken >= at:
                lag = max(lag, -offset)
        return lag

    def _check_ticks(self) -> None:
        """Liveness in calm stretches, and the catch-up policy for every skipped tick."""
        s = self.sc.settings
        self._adoption_windows()
        recover = 2 * s.lease_ms + 3 * s.heartbeat_ms + 200
        threshold = s.catchup_window_ms if s.catchup is CatchUp.ALL else s.catchup_grace_ms
        schedule = IntervalSchedule(self._all_entries)
        # A genesis restarts every entry's series (from its next claim): each era is judged on its own.
        by_entry: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for (entry, tick), (_s, _e, offset, _ts) in self.decisions.items():
            era = sum(g < offset for g in self.geneses)
            by_entry.setdefault((entry, era), []).append((tick, self.log[offset].appended_at + self.base_offset))
        end = self.now - recover
        allowance = self._early_allowance()
        for (entry, _era), decided in by_entry.items():
            decided.sort()
            for (t_a, _), (t_b, dec_b) in itertools.pairwise(decided):
                skipped = first_skipped = schedule.next_tick(entry, t_a, t_a)
                while skipped is not None and skipped < t_b:
                    self.report.skipped_ticks += 1
                    # ONCE collapses a gap that starts with an overdue tick into its latest tick. A decision's
                    # broker timestamp may be ahead of true time by an adopted clock's offset (or behind).
                    judged = first_skipped if s.catchup is CatchUp.ONCE else skipped
                    assert judged is not None
                    if judged >= dec_b - threshold + _TOLERANCE_MS + s.decision_lead_ms + allowance:
                        self._fail(
                            f"tick ({entry}, {skipped}) was skipped but was not overdue by {threshold} ms when "
                            f"tick {t_b} was decided (policy {s.catchup.value})"
                        )
                    skipped = schedule.next_tick(entry, t_a, skipped)
        # At-least-once: every decided tick is published by someone in the end (the tail gives the time), unless
        # no healthy node can run its entry any more, or a genesis came after it (a genesis forgets unconfirmed
        # ticks: only the ones decided before it, by sessions that had all given up).
        if s.delivery is DeliveryMode.AT_LEAST_ONCE:
            runnable_now = self.coverage[-1][1]
            last_genesis = max(self.geneses, default=-1)
            for (entry, tick), (_s, _e, offset, _ts) in self.decisions.items():
                if entry not in runnable_now or offset < last_genesis or (entry, tick) in self.dispatched:
                    continue
                # (A tick decided on a time line ahead of true time, an adopted clock step, is published when it
                # falls due: only ticks due before the last change must have gone out. Likewise a tick decided
                # before the nodes took up a clock behind true time: it falls due that much later, by that clock.)
                decided_at = self.log[offset].appended_at
                lag = self._line_lag_after(decided_at)
                if decided_at < self.last_change and tick - self.base_offset < self.last_change - lag:
                    self._fail(f"tick ({entry}, {tick}) was decided (at-least-once) but never published")
                    return
        # Calm stretches: every tick of an entry that some healthy node can run must be decided, within grace.
        decided_keys = self.decisions
        # A genesis restarts every entry's series (from its next claim): each era has a grid of its own.
        eras = [-1, *self.geneses, len(self.log)]
        for (entry, period), (era_start, era_end) in itertools.product(
            self._all_entries.items(), itertools.pairwise(eras)
        ):
            ticks = [t for (e, t), d in decided_keys.items() if e == entry and era_start < d[2] < era_end]
            if not ticks:
                continue
            tick = min(ticks)
            last = self.log[era_end].appended_at - s.catchup_grace_ms if era_end < len(self.log) else end
            while tick < min(end, last) + self.base_offset:
                sim_tick = tick - self.base_offset
                if self._calm(sim_tick - recover, sim_tick + s.catchup_grace_ms, entry) and self._runnable(
                    entry, sim_tick - recover, sim_tick + s.catchup_grace_ms
                ):
                    self.report.checked_calm_ticks += 1
                    got = decided_keys.get((entry, tick))
                    if got is None:
                        self._fail(f"tick ({entry}, {tick}) fell due in a calm stretch but was never decided")
                        return
                    lateness = self.log[got[2]].appended_at - sim_tick
                    if lateness > s.catchup_grace_ms:
                        self._fail(f"tick ({entry}, {tick}) decided {lateness} ms late in a calm stretch")
                    # A deferred publish may take up to two leases (see _execute): calm must last that long too.
                    calm_publish = self._calm(sim_tick, sim_tick + 2 * s.lease_ms + s.catchup_grace_ms, entry)
                    if calm_publish and (entry, tick) not in self.dispatched:
                        self._fail(f"tick ({entry}, {tick}) was decided in a calm stretch but never published")
                        return
                tick += period

    def _covered(self) -> None:
        # A stopping node makes no new decisions, and a sick or waiting one cannot: none covers its entries.
        entries = frozenset(
            e
            for n in self.nodes
            if n.status == "up" and n.core is not None and not n.core.stopping and not n.sick(self.now)
            for e in n.entries
        )
        if entries != self.coverage[-1][1]:
            self.coverage.append((self.now, entries))

    def _runnable(self, entry: str, start: int, end: int) -> bool:
        """Whether some healthy up node could run ``entry`` throughout [start, end] (sim time)."""
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
        for kind, n in (("hostile_records", report.hostile_records), ("geneses", report.geneses)):
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
