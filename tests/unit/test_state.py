"""The fold's rules, pinned at their exact boundaries, and the records that must not break it."""

from __future__ import annotations

import json

import pytest
from foldlog import LEASE, Log

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import ClusterState
from celery_kafka_beat.protocol.state import MAX_ENDED, MAX_LOOSE_CATALOGS, FoldRules, catalog_digest

# -- sessions end by goodbye or by a vote, never by broker time ---------------------------------------------------


def test_no_amount_of_broker_time_ends_a_session() -> None:
    """A broker clock stepping forward (or a long quiet spell) moves log time, and no lease ends with it."""
    log = Log()
    log.join(1000, "s1")
    log.add(1000 + 10 * LEASE, None)
    log.add(10**12, wire.Heartbeat(session="s2", seq=1))
    assert log.state.is_live("s1")
    assert log.state.log_time == 10**12


def test_a_vote_naming_the_latest_record_ends_the_session_and_frees_its_entries() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    claim = log.claim(10, "s1", "a")
    assert log.state.owner_of("a") == ("s1", claim)
    log.add(20, wire.Expire(session="s2", seq=log.q(), items=(("s1", claim),)))
    assert log.outcome.ended == ("s1",)
    assert not log.state.is_live("s1")
    assert log.state.owner_of("a") is None


def test_a_vote_naming_an_older_record_is_stale_and_changes_nothing() -> None:
    """The voter had not read the session's latest record: the session may well be alive."""
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    old = log.claim(10, "s1", "a")
    log.hb(20, "s1")
    log.add(30, wire.Expire(session="s2", seq=log.q(), items=(("s1", old),)))
    assert log.outcome.valid
    assert log.outcome.ended == ()
    assert log.state.owner_of("a") == ("s1", old)


def test_votes_from_unknown_sessions_and_self_votes_count_for_nothing() -> None:
    log = Log()
    hello = log.join(0, "s1")
    log.add(10, wire.Expire(session="stranger", seq=1, items=(("s1", hello),)))
    assert not log.outcome.valid
    log.add(11, wire.Expire(session="s1", seq=log.q(), items=(("s1", 10),)))  # its own latest record is 10
    assert log.state.is_live("s1")


def test_expired_means_expired_a_late_heartbeat_does_not_revive_the_session() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    claim = log.claim(10, "s1", "a")
    log.add(20, wire.Expire(session="s2", seq=log.q(), items=(("s1", claim),)))
    log.hb(30, "s1")
    assert not log.state.is_live("s1")
    log.claim(31, "s1", "a")
    assert log.outcome.granted == ()
    log.add(32, wire.Hello(session="s1", seq=log.q(), node="x", lease_ms=LEASE, catalog="c"))
    assert not log.outcome.valid


def test_a_hello_asking_for_a_lease_longer_than_the_protocol_allows_is_refused() -> None:
    log = Log(FoldRules(max_lease_ms=5000))
    log.join(0, "s1", lease=5000)
    assert log.state.is_live("s1")
    log.join(0, "s2", lease=5001)
    assert not log.state.is_live("s2")


def test_a_session_is_a_candidate_only_once_it_said_ready() -> None:
    log = Log()
    log.join(0, "s1")
    assert log.state.is_ready("s1")  # the first: nobody to protect, ready at once
    log.join(0, "s2")
    assert not log.state.is_ready("s2")
    before = log.state.membership
    log.add(10, wire.Ready(session="s2", seq=log.q()))
    assert log.state.is_ready("s2")
    assert log.state.membership != before  # assignment is recomputed
    log.add(11, wire.Ready(session="stranger", seq=1))
    assert not log.outcome.valid
    assert not log.state.is_ready("stranger")


def test_first_claim_wins_and_the_loser_gets_nothing() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    first = log.claim(10, "s1", "a")
    log.claim(11, "s2", "a")
    assert log.outcome.granted == ()
    assert log.state.owner_of("a") == ("s1", first)


def test_a_claim_outside_the_catalog_is_refused() -> None:
    log = Log()
    log.join(0, "s1", entries=("a",))
    log.claim(10, "s1", "a", "z")
    assert log.outcome.granted == ("a",)


def test_a_decision_must_quote_the_current_epoch_and_a_later_tick() -> None:
    log = Log()
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    decide = [wire.DecideItem(entry="a", epoch=epoch, tick=100), wire.DecideItem(entry="a", epoch=epoch + 1, tick=200)]
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=tuple(decide)))
    assert [i.tick for i in log.outcome.decided] == [100]
    log.add(21, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=100),)))
    assert log.outcome.decided == ()


def test_a_release_only_ends_the_claim_it_names() -> None:
    log = Log()
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    log.add(11, wire.Release(session="s1", seq=log.q(), items=(("a", epoch + 100),)))
    assert log.state.owner_of("a") == ("s1", epoch)
    log.add(12, wire.Release(session="s1", seq=log.q(), items=(("a", epoch),)))
    assert log.state.owner_of("a") is None


def test_goodbye_frees_everything_at_once() -> None:
    log = Log()
    log.join(0, "s1")
    log.claim(10, "s1", "a", "b")
    log.add(11, wire.Goodbye(session="s1", seq=log.q()))
    assert log.state.owner_of("a") is None
    assert log.state.owner_of("b") is None


# -- confirmations -------------------------------------------------------------------------------------------------


def test_a_confirmation_counts_even_from_a_session_that_has_ended() -> None:
    """A tick's confirmation held up in a producer while the broker was away lands after its session ended; it
    still marks the tick published (else the next owner re-sends it: a duplicate), and it renews nothing."""
    log = Log()
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    item = wire.DecideItem(entry="a", epoch=epoch, tick=500)
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(item,), ack=True))
    log.add(21, wire.Goodbye(session="s1", seq=log.q()))
    log.add(5001, wire.Published(session="s1", seq=log.q(), items=(("a", 500),)))
    assert not log.outcome.valid
    assert log.state.entries["a"].published
    assert log.state.entries["a"].unconfirmed == ()
    assert not log.state.is_live("s1")


def test_a_confirmation_from_a_session_never_seen_is_ignored() -> None:
    """A stray writer must not stop the next owner from re-sending an unconfirmed tick (at-least-once)."""
    log = Log()
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    log.add(
        20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=5),), ack=True)
    )
    log.add(21, wire.Published(session="stranger", seq=1, items=(("a", 5),)))
    assert log.state.entries["a"].unconfirmed == ((5, "s1"),)


def test_unconfirmed_ticks_are_kept_until_confirmed_and_survive_a_snapshot() -> None:
    log = Log()
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    items = tuple(wire.DecideItem(entry="a", epoch=epoch, tick=t) for t in (100, 200, 300))
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=items, ack=True))
    log.add(21, wire.Published(session="s1", seq=log.q(), items=(("a", 200),)))
    assert log.state.entries["a"].unconfirmed == ((100, "s1"), (300, "s1"))
    again = ClusterState.from_json(log.state.to_json())
    assert again.entries["a"].unconfirmed == ((100, "s1"), (300, "s1"))
    assert again.to_json() == log.state.to_json()


# -- catalogs: input like everything else --------------------------------------------------------------------------


def test_a_catalog_whose_digest_does_not_match_is_ignored() -> None:
    log = Log()
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest="f" * 32, part=0, parts=1, data='["a"]'))
    assert log.state.catalogs == {}


@pytest.mark.parametrize(
    "data",
    ["[" * 100_000, "[" + "9" * 5000 + "]", '["a", NaN]', '["a", Infinity]', "[1e999]", '{"a": 1}', "\x00"],
    ids=["deep", "huge-int", "nan", "infinity", "huge-float", "object", "nul"],
)
def test_a_catalog_that_breaks_parsers_is_ignored_not_raised(data: str) -> None:
    """Trap 12: only JSONDecodeError was caught here; a ValueError (int digits), a RecursionError (nesting) or a
    non-list stopped every replica for good."""
    log = Log()
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest="d" * 32, part=0, parts=1, data=data))
    assert log.state.catalogs == {}
    assert log.state.partial_catalogs == {}


def test_catalog_parts_that_disagree_on_their_count_are_not_mixed() -> None:
    digest, data = catalog_digest(("a", "b"))
    log = Log()
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest=digest, part=0, parts=2, data=data[:3]))
    log.add(0, wire.CatalogPart(session="x", seq=1, digest=digest, part=1, parts=5, data="junk"))
    log.add(0, wire.CatalogPart(session="s1", seq=2, digest=digest, part=1, parts=2, data=data[3:]))
    assert log.state.catalogs[digest] == frozenset({"a", "b"})


def test_catalogs_whose_hello_never_came_are_forgotten_and_bounded() -> None:
    """A catalog is kept for its hello; one whose hello never lands (the node died), or that never completes, must
    not stay for ever (nor ride along in every snapshot)."""
    rules = FoldRules(catalog_retention_ms=1000)
    log = Log(rules)
    for i in range(MAX_LOOSE_CATALOGS + 10):
        digest, data = catalog_digest((f"e{i}",))
        log.add(0, wire.CatalogPart(session=f"s{i}", seq=1, digest=digest, part=0, parts=1, data=data))
        log.add(0, wire.CatalogPart(session=f"p{i}", seq=1, digest=f"p{i}", part=0, parts=2, data="["))
    assert len(log.state.loose) == len(log.state.catalogs) == MAX_LOOSE_CATALOGS
    assert len(log.state.partial_catalogs) == MAX_LOOSE_CATALOGS
    log.add(1001, None)
    assert log.state.catalogs == {}
    assert log.state.partial_catalogs == {}
    assert log.state.loose == {}


def test_a_catalog_named_by_a_live_session_stays() -> None:
    rules = FoldRules(catalog_retention_ms=1000)
    log = Log(rules)
    log.join(0, "s1")
    log.add(10**9, None)
    assert log.state.can_run("s1", "a")


# -- snapshot parts ------------------------------------------------------------------------------------------------


def test_a_snapshot_part_claiming_a_later_state_than_its_own_offset_is_invalid() -> None:
    log = Log()
    log.join(0, "s1")
    log.add(1, wire.SnapshotPart(session="s1", seq=log.q(), snap_id="x", as_of=10**12, part=0, parts=1, data="{}"))
    assert not log.outcome.valid
    offset = len(log.records)
    log.add(2, wire.SnapshotPart(session="s1", seq=log.q(), snap_id="y", as_of=offset - 1, part=0, parts=1, data="{}"))
    assert log.outcome.valid


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(offset=float("inf")),
        lambda b: b.update(sessions=[["s", "n", 1, "c", 1, 1, "yes", 2]]),
        lambda b: b.update(entries=[["a", "ghost", 3, None, None, None, -1, -1, False, []]]),
        lambda b: b.update(entries=[["a"]]),
        lambda b: b.update(v=1),
        lambda b: b.pop("quiet"),
        lambda b: b.update(log_time=10**30),
    ],
    ids=["infinity", "bad-flag", "owner-not-live", "short-row", "old-format", "missing-field", "huge-int"],
)
def test_a_malformed_snapshot_raises_value_error_only(mutate: object) -> None:
    log = Log()
    log.join(0, "s1")
    body = json.loads(log.state.to_json())
    mutate(body)  # type: ignore[operator]
    with pytest.raises(ValueError, match="malformed snapshot"):
        ClusterState.from_json(json.dumps(body))


def test_snapshot_round_trip() -> None:
    log = Log()
    log.join(0, "s1")
    log.join(0, "s2")
    epoch = log.claim(10, "s1", "a")
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=7),)))
    log.add(21, wire.Ready(session="s1", seq=log.q()))
    log.add(22, None)
    snapshot = log.state.to_json()
    assert ClusterState.from_json(snapshot).to_json() == snapshot


# -- genesis ---------------------------------------------------------------------------------------------------------

RULES = FoldRules(max_lease_ms=1000)  # a genesis needs 1.1 s of quiet
QUIET = RULES.genesis_quiet_ms


def _quiet_log() -> tuple[Log, int]:
    """A session that owns 'a' and decided a tick, then a waiter's mark and a quiet stretch of waits."""
    log = Log(RULES)
    log.join(0, "s1")
    epoch = log.claim(10, "s1", "a")
    log.add(20, wire.Decide(session="s1", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=900),)))
    log.add(30, wire.Wait(session="w", seq=1, low=3, mark=True))
    start, _ = log.add(40, wire.Wait(session="w", seq=2, low=3))
    return log, start


def test_a_genesis_after_a_quiet_stretch_starts_the_state_afresh_with_a_floor() -> None:
    log, start = _quiet_log()
    log.add(40 + QUIET, wire.Wait(session="w", seq=3, low=3))
    log.add(40 + QUIET, wire.Genesis(session="w", seq=4, start=start, elapsed_ms=QUIET, floor=950))
    assert log.outcome.valid
    assert log.state.sessions == {}
    assert log.state.entries == {}
    assert log.state.floor == 40 + QUIET  # the genesis's own time is later than the floor it was given
    log.join(2000, "s2")
    epoch = log.claim(2001, "s2", "a")
    assert log.state.entries["a"].anchor == 2001
    log.add(2002, wire.Decide(session="s2", seq=log.q(), items=(wire.DecideItem(entry="a", epoch=epoch, tick=1140),)))
    assert log.outcome.decided == ()  # at or before the floor: never decided again


@pytest.mark.parametrize(
    ("gap_ms", "elapsed_ms", "start_shift"),
    [(QUIET - 1, QUIET, 0), (QUIET, QUIET - 1, 0), (QUIET, QUIET, 1), (QUIET, QUIET, -1)],
    ids=["broker-time-short", "own-clock-short", "not-the-first-quiet-record", "a-busy-record"],
)
def test_a_genesis_is_refused_unless_it_names_a_long_enough_quiet_stretch(
    gap_ms: int, elapsed_ms: int, start_shift: int
) -> None:
    log, start = _quiet_log()
    log.add(40 + gap_ms, wire.Genesis(session="w", seq=4, start=start + start_shift, elapsed_ms=elapsed_ms, floor=0))
    assert not log.outcome.valid
    assert log.state.is_live("s1")


def test_a_busy_record_in_the_stretch_voids_the_genesis_but_stray_bytes_do_not() -> None:
    log, start = _quiet_log()
    log.add(50, None)  # an undecodable record: not activity
    log.add(40 + QUIET, wire.Genesis(session="w", seq=4, start=start, elapsed_ms=QUIET, floor=0))
    assert log.outcome.valid
    log, start = _quiet_log()
    log.hb(50, "s1")
    log.add(40 + QUIET, wire.Genesis(session="w", seq=4, start=start, elapsed_ms=QUIET, floor=0))
    assert not log.outcome.valid


def test_a_garbage_writer_cannot_restart_a_running_cluster() -> None:
    """Two records back to back (one undecodable, then a genesis naming it) in a live cluster: refused, because
    the stretch is not quiet in broker time (running sessions write at least once per lease)."""
    log = Log(RULES)
    log.join(0, "s1")
    start, _ = log.add(10, None)
    log.add(11, wire.Genesis(session="x", seq=1, start=start, elapsed_ms=10**9, floor=0))
    assert not log.outcome.valid
    assert log.state.is_live("s1")


def test_a_genesis_floor_far_in_the_future_is_cut() -> None:
    log, start = _quiet_log()
    log.add(40 + QUIET, wire.Genesis(session="w", seq=4, start=start, elapsed_ms=QUIET, floor=10**15))
    assert log.outcome.valid
    assert log.state.floor == 40 + QUIET + 86_400_000


def test_versions() -> None:
    log = Log()
    digest, data = catalog_digest(("a",))
    log.add(0, wire.CatalogPart(session="old", seq=1, digest=digest, part=0, parts=1, data=data))
    log.add(0, wire.Hello(session="old", seq=2, node="n", lease_ms=LEASE, catalog=digest, version=1))
    assert log.state.old_versions_live()
    log.add(1, wire.Goodbye(session="old", seq=3))
    assert not log.state.old_versions_live()


def test_ended_sessions_are_bounded() -> None:
    log = Log()
    for i in range(MAX_ENDED + 5):
        log.add(0, wire.Hello(session=f"s{i}", seq=1, node="n", lease_ms=LEASE, catalog="c"))
        log.add(0, wire.Goodbye(session=f"s{i}", seq=2))
    assert len(log.state.ended) == MAX_ENDED
    assert "s0" not in log.state.ended


def test_while_no_ready_session_is_live_the_oldest_live_session_is_ready() -> None:
    """A cluster starting (or one whose ready sessions all went away): the first hello is ready at once; with a
    ready session live, a newcomer waits for its probation; when the ready ones end, the oldest live one is ready."""
    log = Log()
    first = log.join(0, "s1")
    log.join(0, "s2")
    assert (log.state.is_ready("s1"), log.state.is_ready("s2")) == (True, False)
    log.add(10, wire.Expire(session="s2", seq=log.q(), items=(("s1", first),)))
    assert log.state.is_ready("s2")
    log.join(20, "s3")
    assert not log.state.is_ready("s3")
    assert log.state.ready_live == 1
    assert ClusterState.from_json(log.state.to_json()).ready_live == 1


def test_a_crash_looping_replica_is_never_made_ready_over_an_older_session() -> None:
    """Reproduced (chaos, a rolling restart): with no ready session live, each hello of a crash-looping replica
    was ready at once, took every entry and died with them. The oldest live session is the one made ready."""
    log = Log()
    log.join(0, "a1")
    log.join(0, "b1")  # a rolling restart: b1 in its probation when a1 says goodbye
    log.add(5, wire.Goodbye(session="a1", seq=log.q()))
    assert log.state.is_ready("b1")
    for i in range(5):
        log.join(10 + i, f"loop{i}")
        assert not log.state.is_ready(f"loop{i}")
        log.add(10 + i, wire.Goodbye(session=f"loop{i}", seq=log.q()))
    assert log.state.is_ready("b1")
    assert log.state.ready_live == 1


@pytest.mark.parametrize("step", [60_000, -60_000])
def test_an_entry_that_never_ran_counts_from_the_claimers_time_line_during_a_broker_clock_step(step: int) -> None:
    """Reproduced (real brokers, a leader 60 s fast): a new entry first claimed during the step counted its ticks
    from the log time, 60 s ahead, and its first tick went out 60 s late. A claimer holding the step writes its time
    line (``w``); the entry counts from there. Without a hold, and with a line no honest hold has, the log time."""
    log = Log()
    log.join(1000, "s1")
    log.add(1000 + step, wire.Claim(session="s1", seq=log.q(), entries=("a",), hold=(2000, 500)))
    assert log.state.entries["a"].anchor == 2000
    log.add(2000 + step, wire.Claim(session="s1", seq=log.q(), entries=("b",), hold=(2000 + 10**9, 500)))
    assert log.state.entries["b"].anchor == log.state.log_time
