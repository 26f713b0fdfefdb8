"""Replicas that are sick in ways a healthy owner must not pay for, and the protocol's bookkeeping under faults.

A small deterministic cluster: every node's appends land in one log at once; each node reads it (optionally late),
runs its timers every 10 ms and publishes what it is handed at once. Local time is broker time here.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import (
    Action,
    Append,
    Bootstrap,
    CatchUp,
    ClusterState,
    DeliveryMode,
    Dispatch,
    NodeCore,
    NodeSettings,
    Note,
    Truncate,
)
from celery_kafka_beat.protocol import bootstrap as bootstrap_module
from celery_kafka_beat.protocol import node as node_module
from celery_kafka_beat.protocol import snapshots as snapshots_module
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.protocol.sizing import split_items

BASE = 1_700_000_000_000
PERIOD = 1000
ENTRIES = {f"e{i}": PERIOD for i in range(6)}


@dataclasses.dataclass
class Member:
    name: str
    core: NodeCore
    read_pos: int
    lag: int = 0
    alive: bool = True
    report: bool = True
    """Reports every dispatched tick as published at once (else the shell keeps them, as during a broker outage)."""


class Cluster:
    def __init__(self, **settings: object) -> None:
        self.settings = NodeSettings(node="-", **settings)  # type: ignore[arg-type]
        self.now = BASE
        self.log: list[tuple[int, wire.Record | None]] = []  # (broker ts, record)
        self.log_start = 0
        self.members: dict[str, Member] = {}
        self.dispatched: dict[tuple[str, int], list[str]] = {}
        self.sessions = itertools.count(1)
        self.truncations: list[int] = []

    def start(self, name: str, lag: int = 0) -> Member:
        boot = Bootstrap(self.log_start)
        for offset in range(self.log_start, len(self.log)):
            boot.feed(offset, *self.log[offset])
        state = boot.finish()
        assert state is not None
        settings = dataclasses.replace(self.settings, node=name)
        schedule = IntervalSchedule(ENTRIES)
        core = NodeCore(settings, ENTRIES, schedule, lambda: f"{name}.{next(self.sessions)}", state)
        member = self.members[name] = Member(name, core, len(self.log), lag)
        self._run(member, core.start(self.now))
        return member

    def kill(self, name: str) -> None:
        self.members[name].alive = False

    def append(self, record: wire.Record | None) -> None:
        self.log.append((self.now, record))

    def _run(self, member: Member, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Append):
                self.append(action.record)
            elif isinstance(action, Dispatch):
                self.dispatched.setdefault((action.entry, action.tick), []).append(member.name)
                if member.report:
                    member.core.on_dispatched(action.entry, action.tick, action.session)
            elif isinstance(action, Truncate):
                self.truncations.append(action.before)

    def advance(self, ms: int) -> None:
        for _ in range(ms // 10):
            self.now += 10
            for member in list(self.members.values()):
                if not member.alive:
                    continue
                # Reads what was appended at least `lag` ms ago (a lag beyond the lease: it can write, not read).
                while member.read_pos < len(self.log) and self.log[member.read_pos][0] <= self.now - member.lag:
                    ts, record = self.log[member.read_pos]
                    self._run(member, member.core.on_record(member.read_pos, ts, record, self.now))
                    member.read_pos += 1
                self._run(member, member.core.on_timer(self.now))

    def owned(self, name: str) -> set[str]:
        core = self.members[name].core
        return set(core.state.owned.get(core.session or "", set()))

    def missing(self, entries: set[str], start: int, end: int) -> list[tuple[str, int]]:
        """Ticks of ``entries`` due in [start, end) that nobody dispatched (every entry's phase is 0 mod PERIOD
        relative to its first tick)."""
        gaps = []
        for entry in sorted(entries):
            ticks = sorted(t for (e, t) in self.dispatched if e == entry)
            first = next(t for t in ticks if t >= start)
            gaps += [(entry, t) for t in range(first, end, PERIOD) if (entry, t) not in self.dispatched]
        return gaps


def _healthy_owner() -> tuple[Cluster, set[str]]:
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=2000)
    cluster.start("a")
    cluster.advance(3000)
    assert cluster.members["a"].core.state.is_ready(cluster.members["a"].core.session or "")
    owned = cluster.owned("a")
    assert owned == set(ENTRIES)
    return cluster, owned


def test_a_crash_looping_joiner_costs_the_healthy_owner_nothing() -> None:
    """Reproduced: a joiner that dies right after its hello took entries at every hello; each was lost until its
    lease ended. Now it is a candidate only after its probation, which it never lives to see."""
    cluster, owned = _healthy_owner()
    start = cluster.now
    for i in range(20):  # a new life every 1.5 s (the probation is 2 s), dying 1 s after it starts
        cluster.start(f"loop{i}")
        cluster.advance(1000)
        cluster.kill(f"loop{i}")
        cluster.advance(500)
        assert cluster.owned("a") == owned
    assert cluster.missing(owned, start, cluster.now - PERIOD) == []
    assert all(names == ["a"] for names in cluster.dispatched.values())


def test_a_replica_that_can_write_but_not_read_costs_the_healthy_owner_nothing() -> None:
    """Reproduced: a replica whose reads lag beyond the lease sends a new hello every lease; each one moved entries
    away from a healthy owner (240 of 448 ticks lost in 60 s)."""
    cluster, owned = _healthy_owner()
    start = cluster.now
    deaf = cluster.start("deaf", lag=3000)
    cluster.advance(30_000)
    assert cluster.owned("a") == owned
    assert cluster.missing(owned, start, cluster.now - PERIOD) == []
    hellos = [r for _, r in cluster.log if isinstance(r, wire.Hello) and r.node == "deaf"]
    assert len(hellos) > 5  # it kept trying, and never got anything
    assert cluster.owned("deaf") == set()
    assert not deaf.core.state.is_ready(deaf.core.session or "")


def test_the_old_rule_candidacy_at_hello_loses_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: a session is a candidate from its hello on (how it was): the crash-looping joiner takes entries
    and the healthy owner's ticks are lost. Shows that the tests above can fail."""
    monkeypatch.setattr(ClusterState, "is_ready", lambda self, session: session in self.sessions)
    original = node_module.NodeCore._reconcile

    def at_hello(self: NodeCore, now: int) -> list[Action]:
        for s in self.state.sessions.values():
            s.ready = True
        return original(self, now)

    monkeypatch.setattr(node_module.NodeCore, "_reconcile", at_hello)
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=2000)
    cluster.start("a")
    cluster.advance(3000)
    start = cluster.now
    for i in range(10):
        cluster.start(f"loop{i}")
        cluster.advance(1000)
        cluster.kill(f"loop{i}")
        cluster.advance(500)
    assert cluster.missing(set(ENTRIES), start, cluster.now - PERIOD) != []


def test_a_silent_session_is_voted_out_a_lease_after_its_last_record_was_read() -> None:
    cluster, _ = _healthy_owner()
    cluster.start("b")
    cluster.advance(3000)
    b = cluster.members["b"].core.session
    cluster.kill("b")
    died = cluster.now
    cluster.advance(2000)
    votes = [(ts, r) for ts, r in cluster.log if isinstance(r, wire.Expire) and any(s == b for s, _ in r.items)]
    assert votes
    ts, _ = votes[0]
    assert died + 1000 - 260 <= ts <= died + 1000 + 30  # a lease after the last record it wrote (heartbeat 250 ms)
    assert not cluster.members["a"].core.state.is_live(b or "")


def test_confirmations_of_a_session_that_was_lost_are_still_written() -> None:
    """Reproduced: confirmations were dropped while the core was not live, so the next owner published those
    ticks again (at-least-once)."""
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=0, delivery=DeliveryMode.AT_LEAST_ONCE)
    node = cluster.start("a")
    node.report = False
    cluster.advance(3000)
    handed = [k for k, names in cluster.dispatched.items() if "a" in names]
    old = node.core.session
    cluster.advance(1200)  # pausing appends: simulate the session being lost before the publish is reported
    node.core._lose_session(cluster.now, "test")
    assert node.core.session != old
    for entry, tick in handed:
        node.core.on_dispatched(entry, tick, old)
    cluster._run(node, node.core.flush_acks(cluster.now))
    confirmed = {
        (e, t) for _, r in cluster.log if isinstance(r, wire.Published) and r.session == old for e, t in r.items
    }
    assert set(handed) <= confirmed


def test_a_celery_broker_outage_does_not_pile_ticks_up_behind_it() -> None:
    """Reproduced: after a Celery broker outage every tick decided during it went out in one burst, whatever the
    catch-up policy. Now the entry is not decided further while one of its ticks is overdue with the shell."""
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=0, catchup=CatchUp.ONCE)
    node = cluster.start("a")
    cluster.advance(3000)
    node.report = False  # the Celery broker is down: nothing is reported published (the shell keeps retrying)
    before = len(cluster.dispatched)
    cluster.advance(60_000)
    piled = len(cluster.dispatched) - before
    assert piled <= 3 * len(ENTRIES)  # a tick or two per entry (within the 1 s grace), not sixty
    for entry, tick in list(cluster.dispatched)[before:]:
        node.core.on_dispatched(entry, tick)  # the broker is back: they go out
    node.report = True
    after = len(cluster.dispatched)
    cluster.advance(500)
    # Then the catch-up policy: once, the latest overdue tick, per entry.
    assert len(cluster.dispatched) - after <= 2 * len(ENTRIES)


def test_records_never_exceed_the_budget() -> None:
    """Reproduced: a claim larger than the topic's max.message.bytes was retried for ever. Every list is split by
    size as well as by count."""
    names = {f"{'x' * 900}{i}": PERIOD for i in range(300)}
    settings = NodeSettings(node="n", max_record_bytes=16_384, probation_ms=0)
    core = NodeCore(settings, names, IntervalSchedule(names), lambda: "s1")
    written = [a.record for a in core.start(BASE) if isinstance(a, Append)]  # catalog parts and the hello
    assert all(len(wire.encode(r)[1]) <= 16_384 for r in written)
    for offset, record in enumerate(written):
        core.on_record(offset, BASE, record, BASE)
    claims = [a.record for a in core.on_timer(BASE + 1) if isinstance(a, Append)]
    assert len(claims) > 10
    assert all(len(wire.encode(r)[1]) <= 16_384 for r in claims)
    assert sorted(n for r in claims if isinstance(r, wire.Claim) for n in r.entries) == sorted(names)


def test_stray_snapshot_parts_neither_stop_snapshots_nor_delete_records() -> None:
    """Reproduced: a snap record with as_of far beyond its offset made running nodes never snapshot or truncate
    again."""
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=0, snapshot_records=20)
    cluster.start("a")
    cluster.advance(2000)
    lie = wire.SnapshotPart(session="a.1", seq=10**6, snap_id="lie", as_of=10**12, part=0, parts=1, data="{}")
    cluster.append(lie)
    cluster.append(wire.SnapshotPart(session="x", seq=1, snap_id="y", as_of=1, part=0, parts=1, data="{}"))
    cluster.advance(20_000)
    snaps = {r.snap_id for _, r in cluster.log if isinstance(r, wire.SnapshotPart)}
    assert len(snaps) > 3
    assert cluster.truncations
    assert max(cluster.truncations) < len(cluster.log)


def test_a_waiter_is_answered_with_a_snapshot_at_once() -> None:
    cluster, _ = _healthy_owner()
    before = sum(isinstance(r, wire.SnapshotPart) for _, r in cluster.log)
    cluster.append(wire.Wait(session="w", seq=1, low=len(cluster.log), mark=True))
    wait_offset = len(cluster.log) - 1
    cluster.advance(200)
    parts = [(o, r) for o, (_, r) in enumerate(cluster.log) if isinstance(r, wire.SnapshotPart)]
    assert len(parts) > before
    assert parts[-1][1].as_of >= wait_offset


def test_stray_snapshot_parts_are_bounded_in_memory() -> None:
    """Snapshot parts that never complete (a writer died mid-snapshot, or a stray writer) are not kept for ever."""
    cluster, _ = _healthy_owner()
    a = cluster.members["a"]
    boot = Bootstrap(0)
    for i in range(100):
        part = wire.SnapshotPart(
            session=a.core.session or "", seq=10**6 + i, snap_id=f"x{i}", as_of=1, part=0, parts=2, data="{"
        )
        cluster.append(part)
        boot.feed(len(cluster.log) - 1, cluster.now, part)
    cluster.advance(100)
    assert len(a.core._snapshots._assembling) <= snapshots_module.MAX_ASSEMBLING
    assert len(boot._assembling) <= bootstrap_module.MAX_ASSEMBLING


def test_re_sends_are_forgotten_once_their_ticks_are_confirmed() -> None:
    """The memory of ticks re-sent (at-least-once) does not grow for ever."""
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=0, delivery=DeliveryMode.AT_LEAST_ONCE)
    node = cluster.start("a")
    cluster.advance(2000)
    core = node.core
    core._resent = {(f"gone{i}", i) for i in range(5000)}  # re-sent long ago, confirmed since
    cluster.advance(500)
    assert len(core._resent) < 100


def test_one_entrys_ticks_are_never_split_across_records() -> None:
    """Found by the soak: records split by count put an entry's catch-up ticks in two records; the first was lost,
    the second landed, and the tick in the first was skipped outside the policy ('all')."""
    items = [("a", 1), ("b", 1), ("b", 2), ("b", 3), ("c", 1)]
    batches = split_items(items, lambda i: 10, 10_000, 2, lambda i: i[0])
    assert batches == [[("a", 1)], [("b", 1), ("b", 2), ("b", 3)], [("c", 1)]]
    assert split_items(items, lambda i: 10, 10_000, 2) == [items[0:2], items[2:4], items[4:]]


def _stop(cluster: Cluster, name: str) -> None:
    """A clean stop: publish what is decided, say goodbye, exit."""
    member = cluster.members[name]
    cluster._run(member, member.core.stop(cluster.now))
    while not member.core.stopped:
        cluster.advance(10)
    member.alive = False


def _rolling_restart_beside_a_crash_loop(cluster: Cluster) -> set[str]:
    """Replicas a and b restart one after the other, faster than the probation, while a third replica crash-loops
    (a life of 300 ms from hello to SIGKILL, every 500 ms). Returns the crash loop's sessions."""
    cluster.start("a")
    cluster.start("b")
    cluster.advance(3000)
    lives = itertools.count()
    loops: set[str] = set()

    def loop_life() -> None:
        member = cluster.start(f"loop{next(lives)}")
        loops.add(member.core.session or "")
        cluster.advance(300)
        member.alive = False
        cluster.advance(200)

    for _ in range(4):
        loop_life()
    _stop(cluster, "a")
    cluster.start("a2")
    loop_life()
    _stop(cluster, "b")  # no ready session left: a2 is in its probation, the crash loop says hello every 500 ms
    loop_life()  # (b2 takes a while to start)
    cluster.start("b2")
    for _ in range(12):
        loop_life()
    return loops


def test_a_rolling_restart_beside_a_crash_looping_replica_gives_it_nothing() -> None:
    """Reproduced (chaos, 30 minutes): during a rolling restart no session was ready, and each hello of a
    crash-looping replica was ready at once: it took every entry and died with them, again and again. Now the
    session that has shown the longest life is made ready, and the crash loop never owns an entry."""
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=2000)
    start = BASE + 3000
    loops = _rolling_restart_beside_a_crash_loop(cluster)
    claimed = [r for _, r in cluster.log if isinstance(r, wire.Claim) and r.session in loops]
    assert claimed == []
    assert cluster.missing(set(ENTRIES), start, cluster.now - PERIOD) == []


def test_the_old_rule_ready_at_hello_without_a_ready_session_loses_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: while no ready session is live, the latest hello is ready (how it was): the crash loop takes the
    entries and ticks are lost. Shows that the test above can fail."""
    original = ClusterState._hello

    def founder(self: ClusterState, offset: int, record: wire.Hello) -> object:
        nobody = self.ready_live == 0
        outcome = original(self, offset, record)
        if nobody and record.session in self.sessions:
            self.sessions[record.session].ready = True
            self.ready_live = 1
        return outcome

    monkeypatch.setattr(ClusterState, "_promote", lambda self: None)
    monkeypatch.setattr(ClusterState, "_hello", founder)
    cluster = Cluster(lease_ms=1000, heartbeat_ms=250, probation_ms=2000)
    start = BASE + 3000
    loops = _rolling_restart_beside_a_crash_loop(cluster)
    assert [r for _, r in cluster.log if isinstance(r, wire.Claim) and r.session in loops] != []
    assert cluster.missing(set(ENTRIES), start, cluster.now - PERIOD) != []


def test_a_node_starting_during_a_held_step_joins_it_from_the_records_it_read_before_its_hello() -> None:
    """Reproduced (real brokers, a leader 60 s fast): a node started during the step claimed its new entry as soon
    as its hello came back, before any peer record read after it made it join the hold; the records it read while
    starting never reached its time line. So its claim carried no held line, and the entry's first tick came a
    step late. The records read while starting now give the hold to join, and the node joins it when its hello
    comes back: not from those records' timestamps, which were read up to a heartbeat after their append (a line
    joined from them lagged by that much, and the first tick went out early)."""
    step = 60_000
    state = ClusterState()
    state.apply(0, BASE + step, wire.Hello(session="p", seq=0, node="peer", lease_ms=1000, catalog="c"))
    assert state.is_ready("p")  # the only session: ready
    recent: list[tuple[int, int, wire.Record | None]] = []
    for i in range(1, 6):  # the peer holds the step: its line is the true time, the broker's clock 60 s ahead
        hb = wire.Heartbeat(session="p", seq=i, hold=(BASE + 100 * i, 20_000))
        state.apply(i, BASE + step + 100 * i, hb)
        recent.append((BASE + step + 100 * i, 1400, hb))  # all read at 1400, up to 900 ms after their append
    settings = NodeSettings(node="new", lease_ms=1000, heartbeat_ms=250, probation_ms=2000)
    core = NodeCore(settings, {"n0"}, IntervalSchedule({"n0": PERIOD}), lambda: "new.1", state)
    core.prime_clock(recent)
    hello = next(a.record for a in core.start(1400) if isinstance(a, Append) and isinstance(a.record, wire.Hello))
    notes = core.on_record(6, BASE + step + 1401, hello, 1404)
    assert any(isinstance(n, Note) and "holding a broker clock step" in n.message for n in notes)
    assert core.live
    hold = core.clock.hold(1404)
    assert hold is not None
    assert abs(hold[0] - (BASE + 1404)) < 10  # the held (true) line: neither 60 s ahead nor 900 ms behind
    assert hold[1] >= 20_000  # and the peer's time held so far
