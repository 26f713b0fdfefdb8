"""The balancer: bounded loads weighted by tick rate, sticky to the current owners, a pure function of its inputs."""

from __future__ import annotations

import math
import random

import pytest
from foldlog import LEASE, Log

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import ClusterState
from celery_kafka_beat.protocol.assignment import MAX_WEIGHT, Balancer, tick_weight
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.protocol.state import catalog_digest
from proof.balance import measure, settle

DAY = 1000  # the weight of one tick a day


def test_an_entry_weighs_its_tick_rate() -> None:
    schedule = IntervalSchedule({"second": 1000, "minute": 60_000, "day": 86_400_000, "ms": 1})
    assert tick_weight(schedule, "second") == 86_400 * DAY
    assert tick_weight(schedule, "minute") == 1440 * DAY
    assert tick_weight(schedule, "day") == DAY
    assert tick_weight(schedule, "ms") == MAX_WEIGHT


def test_an_entry_without_a_further_tick_weighs_one() -> None:
    class Never:
        def next_tick(self, entry: str, prev: int, after: int) -> int | None:
            return None

    assert tick_weight(Never(), "x") == 1


def test_the_bounds_hold_over_the_whole_grid_sampled() -> None:
    """Given clusters of 2 to 20 replicas and 1 to 10,000 entries (a seeded tenth of the grid; ``python -m
    proof.balance`` runs all of it), when each settles, joins one replica and loses one, then: equal periods never
    put more than ceil(n/k) entries on a replica; mixed periods stay within 1.25x the mean tick rate whenever the
    heaviest entry allows it (n >= 3k) and within mean + heaviest always; a join moves at most 1.5x the newcomer's
    ideal share; a leave moves the leaver's entries and at most two others."""
    figures = measure(quick=True)
    assert figures.cases > 100
    assert figures.equal_over_bound == 0
    assert figures.equal_worst_over_ceil <= 0
    assert 1.0 <= figures.mixed_feasible_worst <= 1.25
    assert figures.mixed_heavy_cases > 0
    assert figures.mixed_heavy_worst_over_bound <= 1.0
    assert max(figures.join_worst.values()) <= 1.5
    assert figures.leave_extra <= 2  # the whole grid: 2 (mixed periods), see proof/balance.py


@pytest.mark.parametrize(("n", "k"), [(1, 2), (2, 2), (3, 2), (4, 2), (3, 3), (7, 3), (10, 4), (9999, 20), (10_000, 7)])
def test_equal_periods_spread_within_one_entry(n: int, k: int) -> None:
    weights = {f"e{i}": DAY for i in range(n)}
    owned = settle(Balancer(), weights, [f"s{j}" for j in range(k)], {})
    counts = sorted(len(es) for es in owned.values())
    assert counts[-1] == math.ceil(n / k)
    assert counts[-1] - counts[0] <= 1


def test_two_replicas_and_three_entries_both_work_whoever_started_first() -> None:
    """The first impression: one replica alone takes everything; the second, once ready, gets a share, and the
    first keeps the rest (the heavy every-second entries spread; the daily cleanup weighs next to nothing)."""
    weights = {"a": 86_400 * DAY, "b": 86_400 * DAY, "c": 86_400 * DAY, "celery.backend_cleanup": DAY}
    balancer = Balancer()
    alone = settle(balancer, weights, ["first"], {})
    assert alone["first"] == set(weights)
    both = settle(balancer, weights, ["first", "second"], alone)
    heavy = {s: len(es - {"celery.backend_cleanup"}) for s, es in both.items()}
    assert sorted(heavy.values()) == [1, 2]
    moved = sum(1 for e in weights if e not in both["first"])
    assert moved == 2 if heavy["second"] == 2 else moved == 1


def test_the_answer_does_not_depend_on_the_order_of_its_inputs() -> None:
    rnd = random.Random(7)
    weights = {f"e{i}": rnd.choice([1, DAY, 1440 * DAY, 86_400 * DAY]) for i in range(300)}
    sessions = [f"s{j}" for j in range(5)]
    owned = {s: set() for s in sessions}
    for i, e in enumerate(weights):
        if i % 3:
            owned[sessions[i % 5]].add(e)
    expected = Balancer().balance(weights, dict.fromkeys(weights, frozenset(sessions)), owned)
    names = list(weights)
    rnd.shuffle(names)
    shuffled_sessions = sessions[::-1]
    again = Balancer().balance(
        {e: weights[e] for e in names},
        {e: frozenset(shuffled_sessions) for e in names},
        {s: set(owned[s]) for s in shuffled_sessions},
    )
    assert again == expected


def test_an_entry_only_one_session_can_run_goes_to_it_however_loaded() -> None:
    weights = {f"e{i}": DAY for i in range(10)}
    candidates: dict[str, frozenset[str]] = dict.fromkeys(weights, frozenset({"a", "b"}))
    candidates["only-a"] = frozenset({"a"})
    answer = Balancer().balance(weights, candidates, {"a": set(weights)})
    assert answer["only-a"] == "a"
    assert sum(1 for s in answer.values() if s == "b") == 5


def test_owners_that_are_no_longer_candidates_lose_their_entries() -> None:
    weights = {f"e{i}": DAY for i in range(6)}
    answer = Balancer().balance(weights, dict.fromkeys(weights, frozenset({"a", "b"})), {"gone": set(weights)})
    assert sorted(answer.values()) == ["a"] * 3 + ["b"] * 3


def test_a_weighted_catalog_folds_and_survives_a_snapshot() -> None:
    log = Log()
    digest, data = catalog_digest({"a": 86_400 * DAY, "b": DAY})
    assert data == '[["a",86400000],["b",1000]]'
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest=digest, part=0, parts=1, data=data))
    log.add(0, wire.Hello(session="s1", seq=2, node="n", lease_ms=LEASE, catalog=digest))
    assert log.state.catalogs[digest] == frozenset({"a", "b"})
    assert log.state.weights[digest] == {"a": 86_400 * DAY, "b": DAY}
    rebuilt = ClusterState.from_json(log.state.to_json())
    assert rebuilt.weights == log.state.weights
    assert rebuilt.to_json() == log.state.to_json()


@pytest.mark.parametrize(
    "data",
    [
        '[["a",0]]',  # weights are at least 1
        '[["a",1.5]]',  # integers only
        '[["a",true]]',
        f'[["a",{MAX_WEIGHT + 1}]]',
        '[["a",1],"b"]',  # names with weights, or names only: not both
        '[["",1]]',
        '[["a",1,2]]',
    ],
)
def test_a_catalog_with_bad_weights_is_not_used(data: str) -> None:
    log = Log()
    digest, _ = catalog_digest(["a"])  # any digest: the content is refused before it is compared
    log.add(0, wire.CatalogPart(session="s1", seq=1, digest=digest, part=0, parts=1, data=data))
    assert log.state.catalogs == {}


def test_a_names_only_catalog_of_protocol_2_still_folds_without_weights() -> None:
    log = Log()
    digest, data = catalog_digest(("a", "b"))
    assert data == '["a","b"]'
    log.add(0, wire.CatalogPart(session="old", seq=1, digest=digest, part=0, parts=1, data=data))
    log.add(0, wire.Hello(session="old", seq=2, node="n", lease_ms=LEASE, catalog=digest, version=2))
    assert log.state.catalogs[digest] == frozenset({"a", "b"})
    assert digest not in log.state.weights
    assert log.state.old_versions_live(), "a protocol 2 replica is live: this version claims nothing"
