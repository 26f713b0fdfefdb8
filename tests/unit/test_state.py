"""The fold's rules, pinned at their exact boundaries."""

from __future__ import annotations

import json

import pytest

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import Bootstrap, ClusterState
from celery_kafka_beat.protocol.state import catalog_digest

LEASE = 1000


class Log:
    """A tiny in-memory topic: append records with explicit broker timestamps and fold them."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.records: list[tuple[int, int, wire.Record | None]] = []
        self.seq = 0

    def add(self, ts: int, record: wire.Record | None) -> tuple[int, object]:
        offset = len(self.records)
        self.records.append((offset, ts, record))
        return offset, self.state.apply(offset, ts, record)

    def q(self) -> int:
        self.seq += 1
        return self.seq

    def join(self, ts: int, session: str, entries: tuple[str, ...] = ("a", "b")) -> None:
        digest, data = catalog_digest(entries)
        self.add(ts, wire.CatalogPart(session=session, seq=self.q(), digest=digest, part=0, parts=1, data=data))
        self.add(ts, wire.Hello(session=session, seq=self.q(), node=session, lease_ms=LEASE, catalog=digest))


def test_lease_is_valid_up_to_its_last_millisecond_and_void_after() -> None:
    log = Log()
    log.join(1000, "s1")
    log.add(1000 + LEASE, wire.Heartbeat(session="s2", seq=log.q()))  # someone else's record moves log time
    assert log.state.is_live("s1")
    log.add(1000 + LEASE + 1, None)  # even an unreadable record moves log time
    assert not log.state.is_live("s1")


def test_expired_means_expired_a_late_heartbeat_does_not_revive_the_session() -> None:
    log = Log()
    log.join(1000, "s1")
    offset, _ = log.add(1100, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    assert log.state.owner_of("a") == ("s1", offset)
    log.add(1100 + LEASE + 1, wire.Heartbeat(session="s1", seq=log.q()))  # the claim renewed it at 1100
    assert not log.state.is_live("s1")
    assert log.state.owner_of("a") is None
    _, outcome = log.add(1100 + LEASE + 2, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    assert outcome.granted == ()  # type: ignore[attr-defined]


def test_broker_clock_stepping_back_does_not_move_log_time_back() -> None:
    log = Log()
    log.join(5000, "s1")
    log.add(1000, wire.Heartbeat(session="s1", seq=log.q()))
    assert log.state.log_time == 5000
    assert log.state.lease_end("s1") == 5000 + LEASE


def test_first_claim_wins_and_the_loser_gets_nothing() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    first, won = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    _, lost = log.add(11, wire.Claim(session="s2", seq=log.q(), entries=("a",)))
    assert won.granted == ("a",)  # type: ignore[attr-defined]
    assert lost.granted == ()  # type: ignore[attr-defined]
    assert log.state.owner_of("a") == ("s1", first)


def test_a_claim_outside_the_catalog_is_refused() -> None:
    log = Log()
    log.join(0, "s1", entries=("a",))
    _, outcome = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("zzz",)))
    assert outcome.granted == ()  # type: ignore[attr-defined]


def test_decisions_need_the_current_epoch_and_a_later_tick() -> None:
    log = Log()
    log.join(0, "s1")
    epoch, _ = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    item = wire.DecideItem
    _, stale = log.add(20, wire.Decide(session="s1", seq=log.q(), items=(item(entry="a", epoch=epoch - 1, tick=5),)))
    _, ok = log.add(21, wire.Decide(session="s1", seq=log.q(), items=(item(entry="a", epoch=epoch, tick=5),)))
    _, again = log.add(22, wire.Decide(session="s1", seq=log.q(), items=(item(entry="a", epoch=epoch, tick=5),)))
    assert stale.decided == ()  # type: ignore[attr-defined]
    assert len(ok.decided) == 1  # type: ignore[attr-defined]
    assert again.decided == ()  # type: ignore[attr-defined]
    assert log.state.entries["a"].last_tick == 5


def test_a_confirmation_counts_even_from_a_session_that_has_ended() -> None:
    """A tick's confirmation held up in a producer while the broker was away lands after its session expired; it
    still marks the tick published (else the next owner re-sends it: a duplicate), and it renews nothing."""
    log = Log()
    log.join(0, "s1")
    epoch, _ = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    item = wire.DecideItem(entry="a", epoch=epoch, tick=500)
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(item,)))
    log.join(5000, "s2")  # s1's lease (1 s) ended long ago
    assert "s1" not in log.state.sessions
    _, outcome = log.add(5001, wire.Published(session="s1", seq=log.q(), items=(("a", 400), ("a", 500))))
    assert not outcome.valid  # type: ignore[attr-defined]
    assert log.state.entries["a"].published
    assert "s1" not in log.state.sessions


def test_unconfirmed_ticks_are_kept_until_confirmed_and_survive_a_snapshot() -> None:
    log = Log()
    log.join(0, "s1")
    epoch, _ = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    items = tuple(wire.DecideItem(entry="a", epoch=epoch, tick=t) for t in (100, 200, 300))
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=items, ack=True))
    log.add(21, wire.Published(session="s1", seq=log.q(), items=(("a", 200),)))
    assert log.state.entries["a"].unconfirmed == ((100, "s1"), (300, "s1"))
    again = ClusterState.from_json(log.state.to_json())
    assert again.entries["a"].unconfirmed == ((100, "s1"), (300, "s1"))
    assert again.to_json() == log.state.to_json()
    # A snapshot from before unconfirmed ticks were tracked (nine fields per entry) still loads.
    old = json.loads(log.state.to_json())
    old["entries"] = [row[:9] for row in old["entries"]]
    assert ClusterState.from_json(json.dumps(old)).entries["a"].unconfirmed == ()


def test_a_release_only_ends_the_claim_it_names() -> None:
    log = Log()
    log.join(0, "s1")
    epoch, _ = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    log.add(11, wire.Release(session="s1", seq=log.q(), items=(("a", epoch + 100),)))
    assert log.state.owner_of("a") == ("s1", epoch)
    log.add(12, wire.Release(session="s1", seq=log.q(), items=(("a", epoch),)))
    assert log.state.owner_of("a") is None


def test_goodbye_frees_everything_at_once() -> None:
    log = Log()
    log.join(0, "s1")
    log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a", "b")))
    log.add(11, wire.Goodbye(session="s1", seq=log.q()))
    assert log.state.owner_of("a") is None
    assert log.state.owner_of("b") is None
    _, outcome = log.add(12, wire.Hello(session="s1", seq=log.q(), node="x", lease_ms=LEASE, catalog="c"))
    assert not outcome.valid  # type: ignore[attr-defined]


def test_a_catalog_whose_digest_does_not_match_is_ignored() -> None:
    log = Log()
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest="f" * 32, part=0, parts=1, data='["a"]'))
    assert log.state.catalogs == {}


def test_snapshot_round_trip_and_bootstrap_from_a_truncated_log_equal_the_live_fold() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    epoch, _ = log.add(10, wire.Claim(session="s1", seq=log.q(), entries=("a",)))
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=7),)))
    snapshot = log.state.to_json()
    assert ClusterState.from_json(snapshot).to_json() == snapshot
    as_of = log.state.offset
    log.add(30, wire.Heartbeat(session="s2", seq=log.q()))
    half = len(snapshot) // 2
    for i, piece in enumerate([snapshot[:half], snapshot[half:]]):
        part = wire.SnapshotPart(session="s2", seq=log.q(), snap_id="x", as_of=as_of, part=i, parts=2, data=piece)
        log.add(40, part)
    log.add(2000, wire.Heartbeat(session="s2", seq=log.q()))  # s1 expires here
    boot = Bootstrap(log_start=as_of + 1)
    for offset, ts, record in log.records[as_of + 1 :]:
        boot.feed(offset, ts, record)
    assert boot.finish().to_json() == log.state.to_json()


def test_bootstrap_refuses_a_log_truncated_without_a_snapshot() -> None:
    boot = Bootstrap(log_start=5)
    boot.feed(5, 0, wire.Heartbeat(session="s", seq=1))
    with pytest.raises(ValueError, match="retention"):
        boot.finish()
