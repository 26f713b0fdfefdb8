"""What operators and other producers can do to the sync topic, against a real broker: delete records at any
offset, hold an open transaction on it, or keep its records small."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import Bootstrap
from celery_kafka_beat.protocol.state import catalog_digest
from celery_kafka_beat.runtime import KafkaNode, read_topic

from .runtime_support import now_ms, wait_for
from .test_runtime import START_S, Recorder, in_process_nodes

pytestmark = pytest.mark.timeout(240)

PERIODS = {f"e{i}": 500 for i in range(8)}


class FakeSession:
    """A session written by the test itself (a raw producer): hello, ready, claims, heartbeats and one snapshot."""

    def __init__(self, bootstrap: str, topic: str, entries: list[str]) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.id = f"fake-{uuid.uuid4().hex[:8]}"
        self.seq = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
        digest, data = catalog_digest(entries)
        self.send(wire.CatalogPart(session=self.id, seq=0, digest=digest, part=0, parts=1, data=data))
        self.send(wire.Hello(session=self.id, seq=0, node="fake", lease_ms=30_000, catalog=digest))

    def send(self, record: wire.Record) -> int:
        """Append ``record`` as this session; return its offset."""
        self.seq += 1
        record = dataclasses.replace(record, session=self.id, seq=self.seq)
        _, value = wire.encode(record)
        self.producer.produce(self.topic, value, partition=0)
        assert self.producer.flush(10) == 0
        _, records = read_topic(self.bootstrap, self.topic)
        return next(r.offset for r in records if r.record == record)


def _owners(node: KafkaNode) -> dict[str, str | None]:
    state = json.loads(node.state_json() or "{}")
    return {row[0]: row[1] for row in state["entries"]}


def test_a_snapshot_that_does_not_cover_the_log_start_is_not_used(kafka_bootstrap: str, topic_name: str) -> None:
    """Reproduced: a claim lands between a snapshot's as_of and its parts, then an operator deletes the records up to
    the first part. The snapshot does not cover the claim: a starting node that used it would see the entry free
    and claim it. It must instead ask the running replicas for a snapshot, and see the entry owned."""
    recorder = Recorder()
    (a,) = in_process_nodes(kafka_bootstrap, topic_name, ["a"], PERIODS, recorder, lease_ms=3000, heartbeat_ms=1000)
    fresh: KafkaNode | None = None
    try:
        a.start()
        wait_for(lambda: a.owned == set(PERIODS), START_S, "a owning everything")
        fake = FakeSession(kafka_bootstrap, topic_name, sorted(PERIODS))
        fake.send(wire.Ready(session="", seq=0))
        # The fake session is a candidate now: 'a' releases the entries the balancer gives it.
        wait_for(lambda: len(a.owned) < len(PERIODS), 20, "a releasing entries to the newcomer")
        claimed = fake.send(wire.Claim(session="", seq=0, entries=tuple(sorted(PERIODS))))
        # The state just before the claim, written as a snapshot by the fake session (a live session: a valid part)
        # after the claim: its as_of does not cover the claim.
        boot = Bootstrap(0)
        for r in read_topic(kafka_bootstrap, topic_name)[1]:
            if r.offset < claimed:
                boot.feed(r.offset, r.timestamp, r.record)
        stale = boot.finish()
        assert stale is not None
        assert stale.offset == claimed - 1
        part = wire.SnapshotPart(
            session="", seq=0, snap_id="stale", as_of=stale.offset, part=0, parts=1, data=stale.to_json()
        )
        first_part = fake.send(part)
        wait_for(lambda: fake.id in _owners(a).values(), 10, "the fake session's claim read by a")
        taken = sorted(e for e, owner in _owners(a).items() if owner == fake.id)
        assert taken
        # The operator deletes the records before the snapshot's part: the claim is gone from the topic.
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_records([TopicPartition(topic_name, 0, first_part)], operation_timeout=10).values():
            future.result()
        # A node that starts now must not take the fake session's entries for free.
        (fresh,) = in_process_nodes(
            kafka_bootstrap, topic_name, ["fresh"], PERIODS, recorder, lease_ms=3000, heartbeat_ms=1000
        )
        fresh.start()
        assert fresh.wait_live(START_S)
        fake.send(wire.Heartbeat(session="", seq=0))
        fresh_owners = _owners(fresh)
        assert all(fresh_owners.get(e) == fake.id for e in taken), f"fresh sees {fresh_owners}, fake owns {taken}"
        assert not (fresh.owned & set(taken))
        waits = [r for r in read_topic(kafka_bootstrap, topic_name)[1] if isinstance(r.record, wire.Wait)]
        assert waits, "the fresh node asked for a snapshot"
    finally:
        for node in [a, *([fresh] if fresh else [])]:
            node.stop(10)


def test_an_open_transaction_of_another_producer_holds_nothing(kafka_bootstrap: str, topic_name: str) -> None:
    """Reproduced: the consumer read at librdkafka's default isolation (read_committed), so another producer's
    open transaction on the topic held every replica's reads, its own records' read-back and so its leases, for up
    to the transaction timeout (15 minutes by default)."""
    recorder = Recorder()
    nodes = in_process_nodes(
        kafka_bootstrap, topic_name, ["a", "b"], PERIODS, recorder, lease_ms=2000, heartbeat_ms=500
    )
    foreign = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"foreign-{uuid.uuid4().hex}"})
    try:
        for node in nodes:
            node.start()
        wait_for(lambda: all(n.live for n in nodes), START_S, "both nodes live")
        sessions = {n.node: n.session for n in nodes}
        foreign.init_transactions(30)
        foreign.begin_transaction()
        foreign.produce(topic_name, b"a record in a transaction that stays open", partition=0)
        foreign.flush(10)
        opened = now_ms()
        wait_for(lambda: now_ms() > opened + 5 * 2000, 15, "five leases with the transaction open")
        assert {n.node: n.session for n in nodes} == sessions, "a session was lost while the transaction was open"
        assert all(n.live for n in nodes)
        late = [d for d in recorder.snapshot() if d["wall_ms"] > opened + 1000]
        assert {d["entry"] for d in late} == set(PERIODS), "ticks stopped while the transaction was open"
    finally:
        foreign.abort_transaction(10)
        for node in nodes:
            node.stop(10)


def test_records_fit_a_topic_with_a_small_record_limit(kafka_bootstrap: str, topic_name: str) -> None:
    """Reproduced: a claim larger than the topic's max.message.bytes was retried for ever (the node never owned
    anything). Records are sized to the topic's limit, read from its configuration."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    config = {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "message.timestamp.type": "LogAppendTime",
        "max.message.bytes": "32768",
    }
    admin.create_topics([NewTopic(topic_name, 1, 1, config=config)])[topic_name].result(30)
    periods = {f"{'n' * 200}-{i:04d}": 60_000 for i in range(1500)}  # claims of ~330 KB if not split
    recorder = Recorder()
    (node,) = in_process_nodes(kafka_bootstrap, topic_name, ["a"], periods, recorder, lease_ms=3000, heartbeat_ms=1000)
    try:
        node.start()
        wait_for(lambda: node.owned == set(periods), 60, "the node owning every entry")
    finally:
        node.stop(10)
    _, records = read_topic(kafka_bootstrap, topic_name)
    claims = [r.record for r in records if isinstance(r.record, wire.Claim)]
    assert len(claims) > 10
    assert all(len(wire.encode(c)[1]) <= 32768 for c in claims)
