"""Starting from what is left of the topic: which snapshot to trust, when to wait, and the genesis."""

from __future__ import annotations

from foldlog import LEASE, Log

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import Append, Bootstrap, ClusterState, Waiter
from celery_kafka_beat.protocol.state import FoldRules


def _boot(log: Log, low: int, rules: FoldRules | None = None) -> Bootstrap:
    boot = Bootstrap(low, rules) if rules is not None else Bootstrap(low)
    for offset, ts, record in log.records[low:]:
        boot.feed(offset, ts, record)
    return boot


def _snapshot(log: Log, writer: str, snap_id: str, parts: int = 2, as_of: int | None = None) -> int:
    """Append a snapshot of the current state in ``parts`` parts; return its as_of."""
    state = log.state.offset if as_of is None else as_of
    data = log.state.to_json()
    size = len(data) // parts + 1
    for i in range(parts):
        piece = data[i * size : (i + 1) * size]
        part = wire.SnapshotPart(
            session=writer, seq=log.q(), snap_id=snap_id, as_of=state, part=i, parts=parts, data=piece
        )
        log.add(100, part)
    return state


def _cluster() -> Log:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    epoch = log.claim(10, "s1", "a")
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=7),)))
    return log


def test_a_topic_that_starts_at_zero_is_folded_from_scratch() -> None:
    log = _cluster()
    state = _boot(log, 0).finish()
    assert state is not None
    assert state.to_json() == log.state.to_json()


def test_a_covering_snapshot_is_used_and_gives_the_live_fold() -> None:
    log = _cluster()
    as_of = _snapshot(log, "s2", "x")
    log.hb(30, "s2")
    state = _boot(log, as_of + 1).finish()
    assert state is not None
    assert state.to_json() == log.state.to_json()


def test_a_claim_between_as_of_and_the_parts_is_never_lost() -> None:
    """Reproduced: a claim lands between a snapshot's as_of and its parts, then records are deleted up to the first
    part (an operator's DeleteRecords). The snapshot does not cover the claim: a starting node must not use it (it
    would see the entry free, claim it, and two replicas would publish every tick)."""
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    as_of = log.state.offset
    snap = log.state.to_json()
    claim = log.claim(10, "s1", "a")  # after as_of
    first_part = len(log.records)
    log.add(20, wire.SnapshotPart(session="s2", seq=log.q(), snap_id="x", as_of=as_of, part=0, parts=1, data=snap))
    boot = _boot(log, first_part)  # the claim at offset `claim` is gone
    assert boot.finish() is None
    assert log.state.owner_of("a") == ("s1", claim)


def test_a_snapshot_claiming_a_future_as_of_is_ignored_and_records_after_it_still_count() -> None:
    """Reproduced: a snap record with as_of far beyond its own offset made starting nodes skip every later record."""
    log = _cluster()
    log.add(30, wire.SnapshotPart(session="s2", seq=log.q(), snap_id="f", as_of=10**12, part=0, parts=1, data="{}"))
    log.claim(40, "s2", "b")
    state = _boot(log, 0).finish()
    assert state is not None
    assert state.owner_of("b") is not None
    assert state.to_json() == log.state.to_json()


def test_parts_that_disagree_on_their_count_raise_nothing_and_another_snapshot_is_used() -> None:
    """Reproduced: parts of one snapshot id with inconsistent part counts raised KeyError in Bootstrap.feed."""
    log = _cluster()
    good = _snapshot(log, "s2", "good")
    log.hb(30, "s1")
    lie = log.state.offset
    for i, n in ((0, 2), (1, 3), (2, 3)):
        log.add(40, wire.SnapshotPart(session="s2", seq=log.q(), snap_id="bad", as_of=lie, part=i, parts=n, data="{"))
    state = _boot(log, good + 1).finish()
    assert state is not None
    assert state.to_json() == log.state.to_json()


def test_an_unusable_snapshot_falls_back_to_the_previous_one() -> None:
    """Reproduced: a snapshot holding Infinity (OverflowError), or one that does not parse, was a fatal error at
    start-up instead of a fallback to the previous snapshot."""
    for bad in ('{"v":2,"offset":Infinity}', "{not json", '{"v":2}'):
        log = _cluster()
        good = _snapshot(log, "s2", "good")
        log.hb(30, "s1")
        as_of = log.state.offset
        log.add(40, wire.SnapshotPart(session="s2", seq=log.q(), snap_id="bad", as_of=as_of, part=0, parts=1, data=bad))
        log.hb(50, "s2")
        boot = _boot(log, good + 1)
        state = boot.finish()
        assert state is not None, bad
        assert state.to_json() == log.state.to_json()
        assert boot.rejected, "the refused snapshot is reported"


def test_a_snapshot_written_by_no_live_session_is_not_trusted() -> None:
    log = _cluster()
    good = _snapshot(log, "s2", "good")
    log.claim(30, "s2", "b")
    forged = ClusterState.from_json(log.state.to_json())
    forged.entries["b"].owner, forged.entries["b"].epoch = None, -1  # "b is free"
    forged.owned.clear()
    data = forged.to_json()
    log.add(
        40, wire.SnapshotPart(session="stranger", seq=1, snap_id="f", as_of=forged.offset, part=0, parts=1, data=data)
    )
    state = _boot(log, good + 1).finish()
    assert state is not None
    assert state.owner_of("b") is not None


def test_a_topic_truncated_without_a_covering_snapshot_cannot_be_rebuilt() -> None:
    log = _cluster()
    log.hb(30, "s1")
    boot = _boot(log, 3)
    assert boot.finish() is None


# -- waiting and genesis ---------------------------------------------------------------------------------------------

RULES = FoldRules(max_lease_ms=1000)
QUIET = RULES.genesis_quiet_ms


def _appended(actions: list[object]) -> list[wire.Record]:
    return [a.record for a in actions if isinstance(a, Append)]


def test_a_waiter_asks_for_a_snapshot_and_one_answers_it() -> None:
    log = _cluster()
    log.hb(30, "s1")
    boot = _boot(log, 3)
    assert boot.finish() is None
    waiter = Waiter("w", 3, interval_ms=LEASE, rules=RULES)
    (mark,) = _appended(waiter.start(now=0))
    assert isinstance(mark, wire.Wait)
    assert mark.mark
    assert mark.low == 3
    offset, _ = log.add(40, mark)
    assert not boot.feed(offset, 40, mark)
    as_of = _snapshot(log, "s2", "answer", parts=1)
    assert boot.feed(len(log.records) - 1, 100, log.records[-1][2])
    state = boot.finish()
    assert state is not None
    assert state.offset == len(log.records) - 1
    assert state.to_json() == log.state.to_json()
    assert as_of >= offset  # the answer covers the wait


def test_a_waiter_that_nobody_answers_starts_the_state_afresh_after_a_quiet_stretch() -> None:
    log = Log(RULES)
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=5000),)))
    low = 2  # the catalog and hello are gone: nothing can rebuild the state
    boot = _boot(log, low, RULES)
    assert boot.finish() is None
    waiter = Waiter("w", low, interval_ms=200, rules=RULES)
    for offset, ts, record in log.records[low:]:
        waiter.on_record(offset, ts, record, now=0)
    now, ts = 0, 100
    pending = _appended(waiter.start(now))
    genesis = None
    while genesis is None:
        assert now < 10 * QUIET, "no genesis"
        for record in pending:
            offset, _ = log.add(ts, record)
            boot.feed(offset, ts, record)
            waiter.on_record(offset, ts, record, now)
            if isinstance(record, wire.Genesis):
                genesis = record
        now, ts = now + 100, ts + 100
        pending = _appended(waiter.on_timer(now))
    assert log.outcome.valid
    assert genesis.floor == 5000  # the latest tick it saw decided
    assert genesis.elapsed_ms >= QUIET
    state = boot.finish()
    assert state is not None
    assert state.to_json() == log.state.to_json()
    assert state.floor is not None
    assert state.floor >= 5000
    assert state.sessions == {}


def test_a_waiter_writes_no_genesis_while_anyone_is_active() -> None:
    waiter = Waiter("w", 5, interval_ms=200, rules=RULES)
    waiter.start(0)
    waiter.on_record(10, 0, wire.Wait(session="w", seq=1, low=5, mark=True), 0)
    for t in range(0, 10 * QUIET, 100):
        waiter.on_record(11 + t, t, wire.Heartbeat(session="alive", seq=t), t)
        assert not any(isinstance(r, wire.Genesis) for r in _appended(waiter.on_timer(t)))
