"""The Kafka runtime against a real broker: ownership, failover, handover, chaos, clocks, restarts, truncation.

Figures (failover and handover times) are printed; run with ``pytest -s`` to see them.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from celery_kafka_beat.protocol import Dispatch, NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime import KafkaNode, read_cluster_state
from celery_kafka_beat.testing.devkafka import KafkaCluster

from .runtime_support import (
    NodeProc,
    all_dispatches,
    balanced,
    cleanup,
    duplicates,
    fold_topic,
    goodbye_time,
    make_node,
    now_ms,
    procs_settled,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

# Why 30 s: a node process starts (imports, reads the topic, reads its hello back) in well under a second here;
# the bound only catches a hung start on a loaded machine.
START_S = 30.0


# -- in-process helpers ------------------------------------------------------------------------------------------


class Recorder:
    """Dispatch callback shared by in-process nodes: remembers every dispatch with the node and wall time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def callback(self, node: str) -> Any:
        def dispatch(d: Dispatch) -> None:
            with self.lock:
                self.items.append(
                    {"entry": d.entry, "tick": d.tick, "node": node, "session": d.session, "wall_ms": now_ms()}
                )

        return dispatch

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.items)


def session_ids(nodes: Iterable[str]) -> dict[str, str]:
    """Deterministic first-session ids (the balancer spreads entries whatever the ids)."""
    return {n: f"{n}-0-1" for n in nodes}


def in_process_nodes(
    bootstrap: str,
    topic: str,
    names: Iterable[str],
    periods: Mapping[str, int],
    recorder: Recorder,
    *,
    first_ids: Mapping[str, str] | None = None,
    **settings: Any,
) -> list[KafkaNode]:
    nodes = []
    for name in names:
        counter = itertools.count(1)
        prefix = (first_ids or {}).get(name, f"{name}-x-1").rsplit("-", 1)[0]

        def new_id(p: str = prefix, c: Iterator[int] = counter) -> str:
            return f"{p}-{next(c)}"

        nodes.append(
            KafkaNode(
                bootstrap,
                topic,
                NodeSettings(node=name, **settings),
                periods,
                IntervalSchedule(periods),
                recorder.callback(name),
                new_session_id=new_id,
            )
        )
    return nodes


def ownership(nodes: Iterable[KafkaNode]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        for entry in node.owned:
            owners[entry].append(node.node)
    return owners


def settled(nodes: list[KafkaNode], entries: Iterable[str]) -> dict[str, list[str]] | None:
    owners = ownership(nodes)
    if set(owners) == set(entries) and all(len(v) == 1 for v in owners.values()):
        return owners
    return None


def check_lattice(ticks: list[int], period: int, what: str, *, skips: bool = False) -> None:
    """Consecutive dispatched ticks of an interval entry are exactly one period apart (no loss, no repeat); with
    ``skips``, a whole number of periods apart (ticks dropped by the catch-up policy, none repeated)."""
    ticks = sorted(ticks)
    gaps = {b - a for a, b in itertools.pairwise(ticks)}
    if skips:
        assert all(g > 0 and g % period == 0 for g in gaps), f"{what}: gaps {sorted(gaps)} for period {period} ms"
    else:
        assert gaps <= {period}, f"{what}: ticks not one period ({period} ms) apart: gaps {sorted(gaps)}"


# -- node-process helpers ----------------------------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[list[NodeProc]]:
    """Node processes started by a test; whatever still runs at the end is killed."""
    started: list[NodeProc] = []
    yield started
    cleanup(started)


def start_all(nodes: list[NodeProc]) -> None:
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_ready(START_S)


def busiest(owners: Mapping[str, list[str]], nodes: Iterable[NodeProc]) -> tuple[NodeProc, list[str]]:
    """The node owning the most entries, and those entries."""
    victim = max(nodes, key=lambda n: sum(1 for o in owners.values() if o == [n.name]))
    return victim, sorted(e for e, o in owners.items() if o == [victim.name])


def three_nodes_and_victim(
    nodes: list[NodeProc], procs: list[NodeProc], periods: Mapping[str, int]
) -> tuple[NodeProc, list[str], list[NodeProc]]:
    """Start the nodes, wait for a settled assignment and return the busiest node (once it dispatches), the
    entries it owns and the other nodes."""
    procs.extend(nodes)
    start_all(nodes)
    owners = wait_for(lambda: procs_settled(nodes, periods), 20, "every entry owned once")
    victim, lost = busiest(owners, nodes)
    others = [n for n in nodes if n is not victim]
    wait_for(lambda: all(first_dispatch_after([victim], e, 0) for e in lost), 10, "the victim dispatching")
    return victim, lost, others


def first_dispatch_after(nodes: Iterable[NodeProc], entry: str, after_ms: float) -> dict[str, Any] | None:
    found = [d for n in nodes for d in n.dispatches() if d["entry"] == entry and d["wall_ms"] > after_ms]
    return min(found, key=lambda d: d["wall_ms"]) if found else None


def assert_valid_decisions(bootstrap: str, topic: str, dispatches: list[dict[str, Any]]) -> int:
    """Every dispatched tick was validly decided in the log by the session that dispatched it."""
    fold = fold_topic(bootstrap, topic)
    assert fold.from_offset <= 2, "the topic was truncated past its first records: cannot check every decision"
    bad = [d for d in dispatches if fold.decided.get((d["entry"], d["tick"])) != d["session"]]
    assert not bad, f"{len(bad)} dispatches without a matching valid decision, e.g. {bad[:3]}"
    return len(fold.decided)


# -- (a) several nodes in one process ----------------------------------------------------------------------------


def test_in_process_ownership_and_exactly_once(kafka_bootstrap: str, topic_name: str) -> None:
    periods = {f"e{i:02d}": 500 + 50 * (i % 11) for i in range(12)}
    names = ["a", "b", "c"]
    ids = session_ids(names)
    recorder = Recorder()
    nodes = in_process_nodes(
        kafka_bootstrap, topic_name, names, periods, recorder, first_ids=ids, lease_ms=1000, heartbeat_ms=200
    )
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            assert node.wait_live(START_S), node.status
        # The stable assignment: every entry owned once, and nothing left for the balancer to move.
        owners = wait_for(
            lambda: settled(nodes, periods) if balanced(periods, {str(n.session): n.owned for n in nodes}) else None,
            15,
            "the balanced assignment",
        )
        per_node = {n.node: len(n.owned) for n in nodes}
        print(f"\n(a) ownership per node: {per_node}")
        assert min(per_node.values()) >= 2
        start = now_ms()
        time.sleep(5.0)  # the observation window (not a synchronisation)
        end = now_ms()
        assert settled(nodes, periods) == owners, "ownership moved without any membership change"
    finally:
        for node in nodes:
            node.stop(10)
    assert all(n.status.error is None for n in nodes)
    items = recorder.snapshot()
    assert not duplicates(items)
    by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in items:
        by_entry[d["entry"]].append(d)
    lateness = []
    for entry, period in periods.items():
        ticks = sorted(d["tick"] for d in by_entry[entry])
        check_lattice(ticks, period, entry)
        # Every tick of the window [start, end - 300 ms] is there exactly once, dispatched by the owner.
        first = ticks[0]
        due = {t for t in range(first, end, period) if start <= t <= end - 300}
        in_window = [d for d in by_entry[entry] if start <= d["tick"] <= end - 300]
        assert sorted(d["tick"] for d in in_window) == sorted(due), entry
        assert {d["node"] for d in in_window} == set(owners[entry]), entry
        lateness += [d["wall_ms"] - d["tick"] for d in in_window]
    print(f"(a) {len(items)} dispatches, lateness ms min/max {min(lateness)}/{max(lateness)}")
    assert_valid_decisions(kafka_bootstrap, topic_name, items)


# -- (b) SIGKILL failover ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [(3000, 1000), (500, 100)], ids=["default-lease", "short-lease"])
def test_sigkill_failover(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc], lease: tuple[int, int]
) -> None:
    lease_ms, heartbeat_ms = lease
    periods = {f"k{i}": 200 for i in range(6)}
    nodes = [
        make_node(tmp_path, n, kafka_bootstrap, topic_name, periods, lease_ms=lease_ms, heartbeat_ms=heartbeat_ms)
        for n in ("a", "b", "c")
    ]
    victim, lost, others = three_nodes_and_victim(nodes, procs, periods)
    kill_ms = now_ms()
    victim.kill()
    firsts = {
        e: wait_for(partial(first_dispatch_after, others, e, kill_ms), lease_ms / 1000 + 10, f"{e} taken over")
        for e in lost
    }
    times = {e: d["wall_ms"] - kill_ms for e, d in firsts.items()}
    print(
        f"\n(b) lease {lease_ms} ms / heartbeat {heartbeat_ms} ms: SIGKILL failover of {len(lost)} entries: "
        f"first dispatch by the new owner after {min(times.values())}-{max(times.values())} ms"
    )
    assert max(times.values()) <= lease_ms + 1000
    for n in others:
        assert n.terminate() == 0
    assert not duplicates(all_dispatches(nodes))


# -- (c) SIGTERM handover ----------------------------------------------------------------------------------------


def test_sigterm_handover(kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc]) -> None:
    periods = {f"h{i}": 200 for i in range(6)}
    nodes = [make_node(tmp_path, n, kafka_bootstrap, topic_name, periods) for n in ("a", "b", "c")]
    victim, lost, others = three_nodes_and_victim(nodes, procs, periods)
    status = victim.status()
    assert status is not None
    session = status["session"]
    term_ms = now_ms()
    victim.signal(signal.SIGTERM)
    firsts = {e: wait_for(partial(first_dispatch_after, others, e, term_ms), 10, f"{e} handed over") for e in lost}
    assert victim.terminate() == 0
    bye = goodbye_time(fold_topic(kafka_bootstrap, topic_name).records, session)
    assert bye is not None, "no goodbye in the log"
    handover = {e: d["wall_ms"] - term_ms for e, d in firsts.items()}
    print(
        f"\n(c) SIGTERM: goodbye appended {bye - term_ms} ms after the signal; first dispatch by the new owners "
        f"{min(handover.values())}-{max(handover.values())} ms after it"
    )
    assert bye - term_ms < 1000
    assert max(handover.values()) < 1000
    for n in others:
        assert n.terminate() == 0
    dispatches = all_dispatches(nodes)
    assert not duplicates(dispatches)
    # Nothing of the stopped node's entries was lost in the handover: ticks stay one period apart.
    for e in lost:
        check_lattice([d["tick"] for d in dispatches if d["entry"] == e], periods[e], e)
    assert_valid_decisions(kafka_bootstrap, topic_name, dispatches)


# -- (d) kill/restart chaos --------------------------------------------------------------------------------------


def test_kill_restart_cycles(kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc]) -> None:
    rng = random.Random(20240611)
    periods = {f"c{i}": 200 + 50 * (i % 3) for i in range(8)}
    names = ["a", "b", "c", "d"]
    nodes = {
        n: make_node(tmp_path, n, kafka_bootstrap, topic_name, periods, lease_ms=1000, heartbeat_ms=200) for n in names
    }
    procs.extend(nodes.values())
    start_all(list(nodes.values()))
    cycles = 0
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    began = time.monotonic()
    for _ in range(20):
        victim = nodes[rng.choice(names)]
        if rng.random() < 0.75:
            victim.kill()
            kills["SIGKILL"] += 1
        else:
            assert victim.terminate() == 0
            kills["SIGTERM"] += 1
        # Restart at once or after a while, so that both quick rejoins and real takeovers happen.
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.2, 1.5))  # downtime of the victim (part of the scenario)
        victim.start().wait_ready(START_S)
        time.sleep(rng.uniform(0.2, 1.0))  # run time between faults (part of the scenario)
        cycles += 1
    wait_for(lambda: procs_settled(list(nodes.values()), periods), 20, "ownership settles after the chaos")
    for n in nodes.values():
        assert n.terminate() == 0
    elapsed = time.monotonic() - began
    dispatches = all_dispatches(nodes.values())
    dups = duplicates(dispatches)
    decided = assert_valid_decisions(kafka_bootstrap, topic_name, dispatches)
    print(
        f"\n(d) {cycles} kill/restart cycles ({kills}) in {elapsed:.1f} s: {len(dispatches)} dispatches, "
        f"{decided} valid decisions in the log, {len(dups)} duplicated (entry, tick)"
    )
    assert not dups, dups
    for entry, period in periods.items():
        assert sum(1 for d in dispatches if d["entry"] == entry) >= elapsed * 1000 / period / 3, entry


# -- (e) a skewed clock and a paused node ------------------------------------------------------------------------


def test_skewed_clock_and_paused_node(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc]
) -> None:
    """One node's clocks are 10 minutes off; another is SIGSTOPped for two leases. No duplicate, no stale dispatch.

    libfaketime (``faketime -f +10m``) is not usable here: under it librdkafka's timed waits hang, or the offset
    lands as a 10-minute jump mid-run (libfaketime 0.9.10, glibc 2.36). So the node's clock offset option is used:
    its monotonic clock and the wall clock it reports are both 10 minutes ahead (the runtime reads no other clock;
    librdkafka's own CreateTime stamps are ignored on a LogAppendTime topic).
    """
    lease_ms = 1000
    periods = {f"p{i:02d}": 200 for i in range(15)}
    skew_ms = 600_000

    def node(name: str, *extra: str) -> NodeProc:
        return make_node(
            tmp_path, name, kafka_bootstrap, topic_name, periods, lease_ms=lease_ms, heartbeat_ms=200, extra_args=extra
        )

    skewed = node("skewed", "--clock-offset-ms", str(skew_ms))
    normal = node("normal")
    sleeper = node("sleeper")
    nodes = [skewed, normal, sleeper]
    procs.extend(nodes)
    start_all(nodes)
    owners = wait_for(lambda: procs_settled(nodes, periods), 20, "the stable assignment")
    sleeper = max([sleeper, normal], key=lambda n: sum(1 for o in owners.values() if o == [n.name]))
    owned = sorted(sleeper.owned())
    assert owned
    wait_for(lambda: first_dispatch_after([sleeper], owned[0], 0), 10, "the node to pause dispatching")
    status = sleeper.status()
    assert status is not None
    old_session = status["session"]
    sleeper.pause()
    paused_ms = now_ms()
    time.sleep(2 * lease_ms / 1000)  # the pause itself (part of the scenario)
    sleeper.resume()
    resumed_ms = now_ms()
    wait_for(
        lambda: (s := sleeper.status()) is not None and s["session"] != old_session and s["live"],
        10,
        "the paused node starting a new session",
    )
    wait_for(lambda: procs_settled(nodes, periods), 20, "the stable assignment after the pause")
    time.sleep(1.0)  # observation: the new assignment dispatches
    for n in nodes:
        assert n.terminate() == 0
    dispatches = all_dispatches(nodes)
    assert not duplicates(dispatches)
    assert_valid_decisions(kafka_bootstrap, topic_name, dispatches)
    stale = [d for d in sleeper.dispatches() if d["session"] == old_session and d["wall_ms"] >= resumed_ms]
    assert not stale, f"the paused node dispatched under its expired session: {stale[:3]}"

    def real_ms(d: dict[str, Any]) -> int:  # the skewed node reports its (10 min ahead) wall clock
        return int(d["wall_ms"]) - (skew_ms if d["node"] == skewed.name else 0)

    taken = [d for d in dispatches if d["entry"] in owned and paused_ms < real_ms(d) < resumed_ms]
    assert taken, "nobody took the paused node's entries over"
    # The skewed node dispatches on the broker's time, not on its own clock.
    late = sorted(d["wall_ms"] - skew_ms - d["tick"] for d in skewed.dispatches())
    assert late, "the skewed node dispatched nothing"
    print(
        f"\n(e) node 10 min ahead: {len(late)} dispatches, lateness vs real time {late[0]}..{late[-1]} ms "
        f"(median {late[len(late) // 2]}); {sleeper.name} paused {resumed_ms - paused_ms} ms, its "
        f"{len(owned)} entries dispatched by others meanwhile ({len(taken)} ticks), no stale dispatch"
    )
    assert late[0] >= -100
    assert late[len(late) // 2] < 300


# -- (f) restart of the whole cluster ----------------------------------------------------------------------------


def test_full_restart_catchup_once(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc]
) -> None:
    period = 300
    periods = {f"r{i}": period for i in range(4)}

    def cluster(gen: int) -> list[NodeProc]:
        return [
            make_node(tmp_path / f"gen{gen}", n, kafka_bootstrap, topic_name, periods, lease_ms=1000, heartbeat_ms=200)
            for n in ("a", "b", "c")
        ]

    first = cluster(1)
    procs.extend(first)
    start_all(first)
    wait_for(lambda: procs_settled(first, periods), 20, "every entry owned once")
    wait_for(lambda: len(all_dispatches(first)) >= 4 * len(periods), 10, "a few ticks")
    for n in first:
        n.signal(signal.SIGTERM)
    codes = {n.name: n.terminate() for n in first}
    assert set(codes.values()) == {0}, (codes, {n.name: n.log_tail() for n in first})
    down_ms = now_ms()
    time.sleep(2.5)  # the cluster's downtime (part of the scenario): > catch-up grace (1 s) + a period
    second = cluster(2)
    procs.extend(second)
    start_all(second)
    up_ms = now_ms()
    wait_for(lambda: procs_settled(second, periods), 20, "every entry owned once again")
    wait_for(lambda: len(all_dispatches(second)) >= 6 * len(periods), 10, "ticks after the restart")
    for n in second:
        assert n.terminate() == 0
    before, after = all_dispatches(first), all_dispatches(second)
    assert not duplicates(before + after)
    for entry in periods:
        pre = sorted(d["tick"] for d in before if d["entry"] == entry)
        post = sorted((d for d in after if d["entry"] == entry), key=lambda d: d["tick"])
        check_lattice(pre, period, f"{entry} before")
        check_lattice([d["tick"] for d in post], period, f"{entry} after")
        catchup = post[0]
        skipped = (catchup["tick"] - pre[-1]) // period - 1
        assert (catchup["tick"] - pre[-1]) % period == 0
        # CatchUp.ONCE: the ticks missed while down are dropped except the latest one, run once at once.
        assert pre[-1] < down_ms
        # Nothing due after the cluster was back was skipped: the tick before the catch-up one fell due before.
        assert catchup["tick"] - period < up_ms
        assert catchup["wall_ms"] - catchup["tick"] < period + 1000
        assert skipped >= 1
        print(
            f"\n(f) {entry}: {len(pre)} ticks before, {skipped} skipped while down, catch-up tick "
            f"{catchup['wall_ms'] - catchup['tick']} ms late, {len(post)} after"
        )


# -- (g) start-up from a truncated topic -------------------------------------------------------------------------


def _watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ckb-test-watermark"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        return int(low), int(high)
    finally:
        consumer.close()


def _low_watermark(bootstrap: str, topic: str) -> int:
    return _watermarks(bootstrap, topic)[0]


def test_start_from_truncated_topic(kafka_bootstrap: str, topic_name: str) -> None:
    periods = {f"s{i}": 200 for i in range(6)}
    recorder = Recorder()
    settings: dict[str, Any] = {"lease_ms": 1000, "heartbeat_ms": 200, "snapshot_records": 20}
    nodes = in_process_nodes(kafka_bootstrap, topic_name, ["a", "b"], periods, recorder, **settings)
    fresh: KafkaNode | None = None
    try:
        for node in nodes:
            node.start()
        wait_for(lambda: settled(nodes, periods), 20, "every entry owned once")
        wait_for(
            lambda: _low_watermark(kafka_bootstrap, topic_name) > 40 and sum(n.truncations for n in nodes) >= 2,
            30,
            "snapshots truncating the topic twice",
        )
        truncations = sum(n.truncations for n in nodes)
        # Quiesce: stop one node, then the other; the last one's state is the state at the end of the log.
        assert nodes[0].stop(10)
        assert nodes[1].stop(10)
        live_json = nodes[1].state_json()
        assert live_json is not None
        low = _low_watermark(kafka_bootstrap, topic_name)
        rebuilt = read_cluster_state(kafka_bootstrap, topic_name)
        print(f"\n(g) {truncations} truncations; low watermark {low}, state rebuilt at offset {rebuilt.offset}")
        assert low > 0
        assert rebuilt.to_json() == live_json
        before = recorder.snapshot()
        # A fresh node starts from the truncated topic, takes everything over and continues the series.
        fresh = in_process_nodes(kafka_bootstrap, topic_name, ["fresh"], periods, recorder, **settings)[0]
        fresh.start()
        assert fresh.wait_live(START_S)
        wait_for(lambda: fresh.owned == set(periods), 10, "the fresh node owning every entry")
        wait_for(lambda: len(recorder.snapshot()) >= len(before) + 3 * len(periods), 10, "fresh dispatches")
    finally:
        for node in [*nodes, *([fresh] if fresh else [])]:
            node.stop(10)
    items = recorder.snapshot()
    assert not duplicates(items)
    for entry in periods:
        check_lattice([d["tick"] for d in items if d["entry"] == entry], 200, entry, skips=True)


# -- broker failover (3 nodes) -----------------------------------------------------------------------------------


def test_survives_leader_broker_crash(kafka_cluster3: KafkaCluster, topic_name: str) -> None:
    bootstrap = kafka_cluster3.bootstrap_servers
    periods = {f"f{i}": 200 for i in range(4)}
    recorder = Recorder()
    nodes = in_process_nodes(bootstrap, topic_name, ["a", "b"], periods, recorder, lease_ms=3000, heartbeat_ms=500)
    try:
        for node in nodes:
            node.start()
        wait_for(lambda: settled(nodes, periods), 30, "every entry owned once")
        admin_conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": logging.getLogger("test.admin")}
        admin = AdminClient(admin_conf)
        leader = admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[0].leader
        wait_for(lambda: len(recorder.snapshot()) >= 8, 10, "dispatches")
        kill_ms = now_ms()
        kafka_cluster3.kill_broker(leader)
        try:
            resumed = wait_for(
                lambda: [d for d in recorder.snapshot() if d["wall_ms"] > kill_ms + 500], 60, "dispatching again"
            )
            print(f"\n(broker) leader {leader} killed; dispatching again after {resumed[0]['wall_ms'] - kill_ms} ms")
        finally:
            kafka_cluster3.restart_broker(leader)
        wait_for(lambda: settled(nodes, periods), 30, "ownership after the broker restart")
        assert all(n.status.running and n.status.error is None for n in nodes)
    finally:
        for node in nodes:
            node.stop(10)
    assert not duplicates(recorder.snapshot())


def test_lagging_node_rereads_truncated_topic(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, procs: list[NodeProc]
) -> None:
    """A node paused while the others snapshot and delete records past its position notices (the consumer's
    offset is out of range), reads the topic again from the latest snapshot and rejoins."""
    periods = {f"t{i}": 200 for i in range(6)}
    args = ["--snapshot-records", "20"]
    nodes = [
        make_node(tmp_path, n, kafka_bootstrap, topic_name, periods, lease_ms=1000, heartbeat_ms=200, extra_args=args)
        for n in ("a", "b", "c")
    ]
    procs.extend(nodes)
    start_all(nodes)
    wait_for(lambda: procs_settled(nodes, periods), 20, "the stable assignment")
    sleeper = nodes[0]
    status = sleeper.status()
    assert status is not None
    position = status["offset"]
    sleeper.pause()
    # Its consumer may have fetched up to the end of the log already: wait until deletion passes that too.
    fetched = _watermarks(kafka_bootstrap, topic_name)[1]
    try:
        wait_for(lambda: _low_watermark(kafka_bootstrap, topic_name) > fetched + 1, 30, "deletion past the paused node")
    finally:
        sleeper.resume()
    wait_for(lambda: "reading the topic again" in sleeper.log.read_text(), 10, "the paused node re-reading the topic")
    wait_for(
        lambda: (s := sleeper.status()) is not None and s["live"] and s["session"] != status["session"],
        10,
        "the paused node live again",
    )
    wait_for(lambda: procs_settled(nodes, periods), 20, "the stable assignment again")
    for n in nodes:
        assert n.terminate() == 0
    dispatches = all_dispatches(nodes)
    assert not duplicates(dispatches)
    fold = fold_topic(kafka_bootstrap, topic_name)
    checked = [d for d in dispatches if (d["entry"], d["tick"]) in fold.decided]
    assert all(fold.decided[(d["entry"], d["tick"])] == d["session"] for d in checked)
    print(f"\n(h) paused at offset {position}; low watermark {fold.low}; {len(checked)} dispatches checked in the log")


def test_fatal_producer_error_recreates_producer(kafka_bootstrap: str, topic_name: str) -> None:
    """A fatal (idempotence) producer error makes the node replace its producer and carry on."""
    periods = {"x": 200}
    recorder = Recorder()
    (node,) = in_process_nodes(kafka_bootstrap, topic_name, ["n"], periods, recorder, lease_ms=1000, heartbeat_ms=200)
    try:
        node.start()
        assert node.wait_live(START_S)
        producer = node._producer
        node._on_producer_error(KafkaError(KafkaError._FATAL, "injected by the test", fatal=True))
        wait_for(lambda: node._producer is not producer, 5, "a new producer")
        seen = len(recorder.snapshot())
        wait_for(lambda: len(recorder.snapshot()) >= seen + 5, 10, "dispatches after the new producer")
        assert node.status.error is None
        assert node.status.running
    finally:
        assert node.stop(10)
    assert not duplicates(recorder.snapshot())
