"""End to end: real ``celery beat`` processes with ``-S kafka``, a real Kafka broker, a real Redis as the Celery
broker, and a recorder consuming every task message they publish.

Figures (failover, handover, lateness) are printed; run ``pytest -s tests/e2e`` to see them.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ephem
import pytest

from celery_kafka_beat.scheduler import tick_task_id
from celery_kafka_beat.testing.devkafka import KafkaCluster
from celery_kafka_beat.testing.devredis import LocalRedis
from tests.e2e.support import CeleryProc, Deployment, Received, Recorder, duplicates, percentile, wait_complete

#: Entries every second with Celery's relative=True: ticks fall on whole seconds, so a test can pick a moment
#: (half past a second) when no replica is between deciding a tick and confirming its publish.
EVERY_SECOND = {"every": 1, "relative": True}
# Why 40 s: a replica's start (interpreter, Celery, reading the topic, first lease) takes 2-5 s here, 10+ s on a
# loaded machine.
START_TIMEOUT_S = 40.0


def at_half_second() -> None:
    """Sleep to the next x.5 s of wall time (not synchronisation: it places a fault between ticks)."""
    now = time.time()
    time.sleep((math.floor(now) + 1.5 - now) % 1.0 or 1.0)


def owners(received: list[Received], since: float = 0.0) -> dict[str, str]:
    """Entry -> the node that dispatched its latest tick received after ``since``."""
    result: dict[str, str] = {}
    for r in sorted(received, key=lambda r: r.received):
        if r.received >= since:
            result[r.entry] = r.node
    return result


def fault_owner_of(
    recorder: Recorder, beats: dict[str, CeleryProc], entry: str, signum: int
) -> tuple[str, float, float]:
    """Signal the replica that dispatched ``entry`` last, half-way between two ticks; wait for another replica to
    dispatch it. Returns (the replica signalled, when, seconds until the other's first tick of it arrived)."""
    owner = owners(recorder.snapshot())[entry]
    at_half_second()
    at = time.time()
    beats[owner].signal(signum)
    after = recorder.wait(
        lambda rs: any(r.entry == entry and r.node != owner and r.received > at for r in rs),
        15,
        f"{entry} dispatched by another replica after signal {signum}",
    )
    return owner, at, min(r.received for r in after if r.entry == entry and r.received > at) - at


def assert_every_tick_once(received: list[Received], entries: list[str], until_ms: int) -> dict[str, int]:
    """Every entry's ticks form an unbroken 1 s series from its first one up to ``until_ms``, each received once."""
    assert not duplicates(received), f"duplicate ticks: {duplicates(received)}"
    missed: dict[str, int] = {}
    for entry in entries:
        ticks = sorted(r.tick for r in received if r.entry == entry)
        assert ticks, f"no tick of {entry} received"
        expected = set(range(ticks[0], until_ms + 1, 1000))
        missing = sorted(expected - set(ticks))
        missed[entry] = len(missing)
        assert not missing, f"{entry}: ticks missed: {missing[:10]} (of {len(expected)})"
    return missed


def test_both_scheduler_names_start_and_dispatch(deploy: Deployment) -> None:
    # Two entries and one with options, over two replicas: the balancer gives each replica at least one whichever
    # started first (rendezvous hashing alone gave one replica none once in about 128 runs with 8 entries).
    deploy.schedule = {f"e{i}": EVERY_SECOND for i in range(2)}
    deploy.schedule["with-options"] = {
        **EVERY_SECOND,
        "args": [1, "two"],
        "kwargs": {"three": 3},
        "options": {"queue": deploy.queue, "priority": 7, "expires": 30, "headers": {"x-team": "ops"}},
    }
    with Recorder(deploy.broker, deploy.queue) as recorder:
        full = deploy.beat("full-path", scheduler="celery_kafka_beat.KafkaScheduler")
        alias = deploy.beat("alias", scheduler="kafka")
        recorder.wait(
            lambda rs: {r.node for r in rs} == {"full-path", "alias"}, START_TIMEOUT_S, "ticks from both replicas"
        )
        received = recorder.wait(lambda rs: len(rs) >= 40, 30, "40 ticks")
    assert not duplicates(received)
    assert not recorder.errors
    # The banner shows what the node is and where it coordinates; Celery's default entry is scheduled too.
    for proc in (full, alias):
        log = proc.text()
        assert f"kafka-beat: kafka -> {deploy.kafka} topic {deploy.topic}" in log
        assert f"kafka-beat: node -> {proc.name}" in log
        assert "of 4 entries" in log  # 3 + celery.backend_cleanup
    for r in received:
        assert r.task_id == tick_task_id(deploy.topic, r.entry, r.tick)  # deterministic
        assert r.headers["celery_beat_task"] is True
        assert r.task == "e2e.tick"
        assert r.tick % 1000 == 0
    optioned = [r for r in received if r.entry == "with-options"]
    assert optioned
    args, kwargs, _embed = optioned[0].body
    assert (args, kwargs) == ([1, "two"], {"three": 3})
    assert optioned[0].properties["priority"] == 7
    assert optioned[0].headers["x-team"] == "ops"
    assert optioned[0].headers["expires"] is not None


def test_two_replicas_share_three_entries_and_again_after_a_restart(deploy: Deployment) -> None:
    """The first impression, balanced: two replicas and three entries every second. Whichever starts first takes
    everything; once the other is ready (its probation), one carries two of the three and the other one (and
    Celery's daily cleanup, which weighs next to nothing). After a replica restarts, the same."""
    entries = ["a", "b", "c"]
    deploy.schedule = dict.fromkeys(entries, EVERY_SECOND)

    def split(rs: list[Received], since: float) -> list[int]:
        last = owners(rs, since=since)
        if set(last) != set(entries):
            return []
        return sorted(Counter(last.values()).values())

    with Recorder(deploy.broker, deploy.queue) as recorder:
        beats = {name: deploy.beat(name) for name in ("b1", "b2")}
        recorder.wait(lambda rs: split(rs, time.time() - 2) == [1, 2], START_TIMEOUT_S, "a 2/1 split of a, b, c")
        for proc in beats.values():
            proc.wait_log(f"node {proc.name} owns", 5)
        beats["b1"].stop()
        recorder.wait(lambda rs: split(rs, time.time() - 2) == [3], START_TIMEOUT_S, "b2 alone runs a, b, c")
        restarted = time.time()
        beats["b1"] = deploy.beat("b1")
        recorder.wait(
            lambda rs: (
                split(rs, max(restarted, time.time() - 2)) == [1, 2]
                and {r.node for r in rs if r.received > restarted} == {"b1", "b2"}
            ),
            START_TIMEOUT_S,
            "a 2/1 split again after b1 restarted",
        )
        received = recorder.snapshot()
    assert not duplicates(received)
    assert not recorder.errors


def test_sigkill_failover(deploy: Deployment) -> None:
    """The support matrix's end-to-end test (tox.ini): two replicas, the owner of an entry SIGKILLed between two
    ticks; the other takes it over within the lease plus a tick, and no tick is received twice."""
    deploy.schedule = dict.fromkeys(["a", "b"], EVERY_SECOND)
    with Recorder(deploy.broker, deploy.queue) as recorder:
        beats = {name: deploy.beat(name) for name in ("k1", "k2")}
        recorder.wait(lambda rs: {r.node for r in rs} == {"k1", "k2"}, START_TIMEOUT_S, "ticks from both replicas")
        victim, killed_at, failover = fault_owner_of(recorder, beats, "a", signal.SIGKILL)
        assert beats[victim].wait(10) == -signal.SIGKILL
        recorder.wait(lambda rs: time.time() - killed_at > 5, 15, "5 s of ticks after the kill")
        received = recorder.snapshot()
    assert failover < 3.0 + 1.5, f"takeover took {failover:.2f} s (lease 3 s)"
    assert not duplicates(received), f"duplicate ticks: {duplicates(received)}"
    assert not recorder.errors


def test_three_replicas_survive_sigkill_and_sigterm_of_the_owner(deploy: Deployment) -> None:
    """The acceptance run: 3 replicas, 24 entries every second for over 60 s, the owner of e0 SIGKILLed and later
    SIGTERMed. Delivery at-least-once with catch-up 'all': no tick may be missed or received twice."""
    entries = [f"e{i}" for i in range(24)]
    deploy.schedule = dict.fromkeys(entries, EVERY_SECOND)
    deploy.conf = {"kafka_beat_catchup": "all", "kafka_beat_delivery": "at-least-once"}
    with Recorder(deploy.broker, deploy.queue) as recorder:
        beats = {name: deploy.beat(name) for name in ("b1", "b2", "b3")}
        started = time.time()
        recorder.wait(lambda rs: len({r.node for r in rs}) == 3, START_TIMEOUT_S, "ticks from all three replicas")
        spread = owners(recorder.snapshot(), since=time.time() - 2)

        # SIGKILL the owner of e0 between two ticks, later SIGTERM its new owner.
        recorder.wait(lambda rs: time.time() - started > 15, 30, "15 s of ticks")
        victim, killed_at, failover = fault_owner_of(recorder, beats, "e0", signal.SIGKILL)
        beats[victim].wait(10)
        recorder.wait(lambda rs: time.time() - started > 35, 30, "35 s of ticks")
        second, _, handover = fault_owner_of(recorder, beats, "e0", signal.SIGTERM)
        assert beats[second].wait(15) == 0, beats[second].text()[-3000:]
        assert "stopped" in beats[second].text()

        recorder.wait(lambda rs: time.time() - started > 65, 40, "65 s of ticks")
        until = (int(time.time()) - 2) * 1000
        received = wait_complete(recorder, entries, until)

    assert not recorder.errors
    assert_every_tick_once(received, entries, until)
    assert len(set(spread.values())) == 3, f"entries not spread: {spread}"
    lateness = [r.lateness_ms for r in received if not (killed_at <= r.received <= killed_at + failover + 0.5)]
    all_late = [r.lateness_ms for r in received]
    print(
        f"\n[e2e] {len(received)} ticks of {len(entries)} entries over {time.time() - started:.0f} s, 0 duplicates, "
        f"0 missed; failover after SIGKILL {failover * 1000:.0f} ms, handover after SIGTERM {handover * 1000:.0f} ms; "
        f"lateness outside the failover p50 {percentile(lateness, 50):.1f} ms p99 {percentile(lateness, 99):.1f} ms "
        f"max {max(lateness):.1f} ms; including it p99 {percentile(all_late, 99):.0f} ms max {max(all_late):.0f} ms"
    )
    assert failover < 3.0 + 1.5  # the lease (3 s), measured from the dead node's last record, plus slack
    assert handover < 1.5  # a goodbye hands over at once: no lease wait
    assert min(all_late) >= 0  # never early
    assert percentile(lateness, 99) < 250


@pytest.mark.parametrize("catchup", ["all", "once"])
def test_full_restart_neither_repeats_nor_loses(deploy: Deployment, catchup: str) -> None:
    """All replicas stop (SIGTERM) and new ones start a few seconds later. No tick runs twice; the ticks that fell
    due meanwhile follow the catch-up policy exactly: 'all' runs each of them late, 'once' runs only the latest."""
    entries = [f"e{i}" for i in range(6)]
    deploy.schedule = dict.fromkeys(entries, EVERY_SECOND)
    deploy.conf = {"kafka_beat_catchup": catchup}
    with Recorder(deploy.broker, deploy.queue) as recorder:
        first = [deploy.beat("r1"), deploy.beat("r2")]
        recorder.wait(lambda rs: len(rs) >= 5 * len(entries), START_TIMEOUT_S, "ticks before the restart")
        for proc in first:
            proc.signal(signal.SIGTERM)
        for proc in first:
            assert proc.wait(15) == 0
        stopped_at = time.time()
        before = len(recorder.snapshot())
        time.sleep(4.0)  # the downtime (a fault's duration, not synchronisation): ticks fall due meanwhile
        deploy.beat("r3")
        deploy.beat("r4")
        recorder.wait(lambda rs: len(rs) >= before + 5 * len(entries), START_TIMEOUT_S, "ticks after the restart")
        until = (int(time.time()) - 2) * 1000
        if catchup == "all":
            received = wait_complete(recorder, entries, until)
        else:
            received = recorder.wait(
                lambda rs: all(any(r.tick >= until and r.entry == e for r in rs) for e in entries), 10, "the last ticks"
            )
    assert {r.node for r in received if r.received > stopped_at} <= {"r3", "r4"}
    if catchup == "all":
        assert_every_tick_once(received, entries, until)  # the ticks of the downtime ran late, once each
        return
    assert not duplicates(received)
    for entry in entries:
        mine = sorted((r for r in received if r.entry == entry), key=lambda r: r.tick)
        last_before = max(r.tick for r in mine if r.received <= stopped_at)
        after = [r for r in mine if r.tick > last_before]
        resumed, following = after[0], after[1]
        ticks = [r.tick for r in mine]
        missed = sorted(set(range(ticks[0], until + 1, 1000)) - set(ticks))
        # Missed: exactly the downtime's ticks before the one catch-up ran; nothing else.
        assert missed == list(range(last_before + 1000, resumed.tick, 1000)), (entry, missed, resumed.tick)
        # And that one was the latest overdue tick: the next one was not yet due at takeover, so it ran on time.
        assert following.tick == resumed.tick + 1000
        assert following.lateness_ms < 1000, (entry, resumed, following)
        assert missed, f"{entry}: the downtime should have missed ticks"


def test_worker_beat_on_two_workers(deploy: Deployment) -> None:
    """``celery worker -B --scheduler kafka`` on two workers: beat runs in a forked child of each; no duplicates,
    entries spread, and a worker's warm shutdown hands its entries over at once."""
    entries = [f"w{i}" for i in range(12)]
    deploy.schedule = dict.fromkeys(entries, EVERY_SECOND)
    with Recorder(deploy.broker, deploy.queue) as recorder:
        workers = {name: deploy.worker_with_beat(name) for name in ("w1", "w2")}
        recorder.wait(lambda rs: {r.node for r in rs} == set(workers), START_TIMEOUT_S, "ticks from both workers")
        recorder.wait(lambda rs: len(rs) >= 60, 30, "60 ticks")
        at_half_second()
        termed_at = time.time()
        mine = {e for e, n in owners(recorder.snapshot()).items() if n == "w1"}
        workers["w1"].signal(signal.SIGTERM)  # the worker's warm shutdown stops its beat child
        recorder.wait(
            lambda rs: mine <= {r.entry for r in rs if r.received > termed_at and r.node == "w2"},
            15,
            "w1's entries dispatched by w2",
        )
        handover = time.time() - termed_at
        workers["w1"].wait(30)
        until = (int(time.time()) - 2) * 1000
        received = wait_complete(recorder, entries, until)
    print(f"\n[e2e] worker -B: {len(received)} ticks, handover of {len(mine)} entries in {handover * 1000:.0f} ms")
    assert mine
    assert "ended cleanly" in workers["w1"].text()  # the beat child said goodbye: no lease had to run out
    assert handover < 3.0
    assert_every_tick_once(received, entries, until)


def test_beat_survives_losing_kafka(redis_url: str, topic_name: str, tmp_path: Path) -> None:
    """The Kafka broker dies under two running replicas: they keep running (no crash loop), stop dispatching once
    their leases run out (they cannot know they still own anything), and resume when the broker is back."""
    entries = [f"k{i}" for i in range(6)]
    with KafkaCluster(nodes=1, workdir=tmp_path / "kafka") as cluster:
        deploy = Deployment(
            kafka=cluster.bootstrap_servers,
            broker=redis_url,
            topic=topic_name,
            workdir=tmp_path,
            schedule=dict.fromkeys(entries, EVERY_SECOND),
        )
        try:
            with Recorder(deploy.broker, deploy.queue) as recorder:
                beats = [deploy.beat("k1"), deploy.beat("k2")]
                recorder.wait(lambda rs: len(rs) >= 5 * len(entries), START_TIMEOUT_S, "ticks before the outage")
                killed_at = time.time()
                cluster.kill_broker(0)
                # Both lose their sessions: each notices its own lease ran out (3 s) and keeps trying.
                deadline = time.monotonic() + 30
                while not all(b.text().count("lost:") >= 1 for b in beats):
                    assert time.monotonic() < deadline, "the replicas did not notice the lost broker"
                    assert all(b.proc is not None and b.proc.poll() is None for b in beats), "a replica exited"
                    time.sleep(0.1)
                quiet_from = killed_at + 3.0 + 0.5  # the lease, plus publishing slack
                time.sleep(2.0)  # an outage of a few seconds more (a fault's duration, not synchronisation)
                cluster.restart_broker(0)
                restarted_at = time.time()
                recorder.wait(
                    lambda rs: {r.entry for r in rs if r.received > restarted_at} == set(entries),
                    60,
                    "every entry dispatched again after the broker came back",
                )
                assert all(b.proc is not None and b.proc.poll() is None for b in beats), "a replica exited"
                received = recorder.snapshot()
        finally:
            deploy.stop_all()
    during = [r for r in received if quiet_from < r.received < restarted_at]
    assert not during, f"dispatched while cut off from Kafka past the lease: {during[:3]}"
    assert not duplicates(received)
    resumed = min(r.received for r in received if r.received > restarted_at) - restarted_at
    print(f"\n[e2e] Kafka outage: dispatching resumed {resumed:.2f} s after the broker restart")


def test_beat_survives_losing_the_celery_broker(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    """Redis (the Celery broker) goes away for six seconds under two deployments of two replicas each
    (at-least-once): they keep their entries and keep running. The tick being published when the broker went away
    is published when it is back; the ticks that fell due meanwhile follow the catch-up policy (reproduced: they
    all went out in one burst whatever the policy). With 'all' every tick is published once; with 'once' each entry
    publishes at most the tick it was publishing and the latest overdue one, then goes on from there."""
    entries = [f"r{i}" for i in range(4)]
    with LocalRedis() as redis:
        deploys = {
            policy: Deployment(
                kafka=kafka_bootstrap,
                broker=redis.url,
                topic=f"{topic_name}-{policy}",
                workdir=tmp_path,
                schedule=dict.fromkeys(entries, EVERY_SECOND),
                conf={"kafka_beat_catchup": policy},
            )
            for policy in ("all", "once")
        }
        received: dict[str, list[Received]] = {}
        try:
            with (
                Recorder(redis.url, deploys["all"].queue) as rec_all,
                Recorder(redis.url, deploys["once"].queue) as rec_once,
            ):
                recorders = {"all": rec_all, "once": rec_once}
                beats = [d.beat(f"{policy}{i}") for policy, d in deploys.items() for i in (1, 2)]
                for recorder in recorders.values():
                    recorder.wait(lambda rs: len(rs) >= 5 * len(entries), START_TIMEOUT_S, "ticks before the outage")
                at_half_second()
                down_at = time.time()
                redis.stop()
                time.sleep(6.0)  # the outage (a fault's duration, not synchronisation)
                redis.start(port=redis.port)
                up_at = time.time()
                for recorder in recorders.values():
                    recorder.wait(
                        lambda rs: all(any(r.entry == e and r.received > up_at + 2 for r in rs) for e in entries),
                        60,
                        "ticks of every entry after the Celery broker came back",
                    )
                until = (int(time.time()) - 2) * 1000
                received["all"] = wait_complete(rec_all, entries, until)
                received["once"] = rec_once.snapshot()
                assert all(b.proc is not None and b.proc.poll() is None for b in beats), "a replica exited"
        finally:
            for d in deploys.values():
                d.stop_all()
    assert_every_tick_once(received["all"], entries, until)
    outage = [r for r in received["all"] if down_at * 1000 < r.tick < up_at * 1000]
    assert outage, "no tick fell due during the outage"
    once = received["once"]
    assert not duplicates(once)
    burst = {}
    for entry in entries:
        # Of the six ticks due during the outage, at most: the one being published (retried) when the broker went
        # away, one decided within the 1 s grace meanwhile, and the latest overdue one.
        burst[entry] = [r.tick for r in once if r.entry == entry and down_at * 1000 < r.tick < up_at * 1000]
        assert len(burst[entry]) <= 3, f"{entry}: {len(burst[entry])} ticks of the outage (catch-up 'once')"
        ticks = sorted(r.tick for r in once if r.entry == entry and r.tick > up_at * 1000 + 1000)
        assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000)), f"{entry}: ticks missed after the outage"
    print(
        f"\n[e2e] Celery broker outage of {up_at - down_at:.1f} s: catch-up 'all' published all {len(outage)} ticks "
        f"due meanwhile (the last {max(r.lateness_ms for r in outage) / 1000:.1f} s late at most); catch-up 'once' "
        f"published {sum(len(b) for b in burst.values())} of them over {len(entries)} entries"
    )


def solar_noon_longitude(at: datetime) -> float:
    """The longitude (degrees east) where the sun crosses the meridian at ``at``: where the local sidereal time
    equals the sun's right ascension."""
    observer = ephem.Observer()
    observer.lat, observer.lon, observer.date = "0", "0", at.strftime("%Y/%m/%d %H:%M:%S")
    sun = ephem.Sun(observer)
    angle = (float(sun.ra) - float(observer.sidereal_time()) + math.pi) % (2 * math.pi) - math.pi
    return math.degrees(angle)


def test_crontab_and_solar_entries(deploy: Deployment) -> None:
    noon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    lon = solar_noon_longitude(noon)
    deploy.schedule = {
        "every-minute": {"crontab": {"minute": "*"}},
        "noon-somewhere": {"solar": ["solar_noon", 0.0, lon]},
    }
    with Recorder(deploy.broker, deploy.queue) as recorder:
        deploy.beat("c1")
        deploy.beat("c2")
        received = recorder.wait(
            lambda rs: {r.entry for r in rs} == {"every-minute", "noon-somewhere"}, 75, "a crontab and a solar tick"
        )
    cron = [r for r in received if r.entry == "every-minute"]
    solar = [r for r in received if r.entry == "noon-somewhere"]
    assert cron[0].tick % 60_000 == 0
    assert len(solar) == 1
    assert abs(solar[0].tick - noon.timestamp() * 1000) < 5000, (solar[0].tick, noon)
    assert 0 <= cron[0].lateness_ms < 1000
    assert 0 <= solar[0].lateness_ms < 1000
    assert not duplicates(received)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"kafka_beat_lease": "fast"}, "kafka_beat_lease='fast': must be a number of seconds"),
        ({"kafka_beat_leese": 3}, "did you mean 'kafka_beat_lease'"),
        ({"kafka_beat_delivery": "exactly-once"}, "must be one of 'at-most-once', 'at-least-once'"),
        ({"kafka_beat_client_config": {"group.id": "x"}}, "'group.id' is managed by KafkaScheduler"),
    ],
)
def test_bad_settings_are_rejected_with_a_clear_message(
    deploy: Deployment, conf: dict[str, object], message: str
) -> None:
    deploy.schedule = {"e": EVERY_SECOND}
    deploy.conf = conf
    proc = deploy.beat("bad")
    assert proc.wait(60) != 0
    assert message in proc.text()
