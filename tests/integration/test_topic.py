"""The sync topic: created with the protocol's configuration, or refused with a message that says what to fix."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from celery_kafka_beat.protocol import NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime import KafkaNode, TopicConfigError, ensure_topic
from celery_kafka_beat.testing.devkafka import KafkaCluster

pytestmark = pytest.mark.timeout(120)

GOOD = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "message.timestamp.type": "LogAppendTime",
}


def _create(admin: AdminClient, topic: str, config: Mapping[str, str], partitions: int = 1) -> None:
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=dict(config))])[
        topic
    ].result()


def _config(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result()
    return {k: str(v.value) for k, v in entries.items()}


def test_creates_topic_with_protocol_config(admin: AdminClient, topic_name: str) -> None:
    info = ensure_topic(admin, topic_name, min_insync_replicas=1)
    assert info.created
    assert info.partitions == 1
    config = _config(admin, topic_name)
    assert config["cleanup.policy"] == "delete"
    assert config["retention.ms"] == "-1"
    assert config["retention.bytes"] == "-1"
    assert config["message.timestamp.type"] == "LogAppendTime"
    assert int(config["max.message.bytes"]) >= 4 * 1024 * 1024
    assert config["min.insync.replicas"] == "1"
    assert len(admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions) == 1
    again = ensure_topic(admin, topic_name)
    assert not again.created


def test_accepts_conf_dict(kafka_bootstrap: str, topic_name: str) -> None:
    assert ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic_name).created


def test_concurrent_creation(kafka_bootstrap: str, topic_name: str) -> None:
    """Several nodes starting at once: one creates, the others find it created and accept it."""
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        barrier.wait()
        try:
            results.append(ensure_topic(admin, topic_name).created)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 4
    assert results.count(True) <= 1


def test_missing_topic_without_create(admin: AdminClient, topic_name: str) -> None:
    with pytest.raises(TopicConfigError, match="does not exist") as info:
        ensure_topic(admin, topic_name, create=False)
    assert "--config message.timestamp.type=LogAppendTime" in str(info.value)
    assert topic_name not in admin.list_topics(timeout=10).topics


@pytest.mark.parametrize(
    "case",
    [
        ({}, 3, "3 partitions", "--delete --topic"),
        ({"message.timestamp.type": "CreateTime"}, 1, "message.timestamp.type=CreateTime", "LogAppendTime"),
        ({"cleanup.policy": "compact"}, 1, "cleanup.policy=compact", "--add-config cleanup.policy=delete"),
        ({"cleanup.policy": "compact,delete"}, 1, "cleanup.policy=compact,delete", "cleanup.policy=delete"),
        ({"retention.ms": "604800000"}, 1, "retention.ms=604800000", "--add-config retention.ms=-1"),
        ({"retention.bytes": "1073741824"}, 1, "retention.bytes=1073741824", "--add-config retention.bytes=-1"),
    ],
    ids=["partitions", "create-time", "compact", "compact-delete", "retention-ms", "retention-bytes"],
)
def test_refuses_unsafe_topic(admin: AdminClient, topic_name: str, case: tuple[dict[str, str], int, str, str]) -> None:
    override, partitions, found, fix = case
    _create(admin, topic_name, {**GOOD, **override}, partitions)
    with pytest.raises(TopicConfigError) as info:
        ensure_topic(admin, topic_name)
    message = str(info.value)
    print(message)
    assert found in message
    assert fix in message
    if partitions == 1:
        assert (
            f"kafka-configs.sh --bootstrap-server <servers> --alter --entity-type topics --entity-name {topic_name}"
            in message
        )


def test_refuses_broker_default_retention(admin: AdminClient, topic_name: str) -> None:
    """A topic made by hand with the broker's defaults has a 7-day retention and CreateTime: both are reported."""
    _create(admin, topic_name, {})
    with pytest.raises(TopicConfigError) as info:
        ensure_topic(admin, topic_name)
    message = str(info.value)
    assert "retention.ms=604800000" in message
    assert "message.timestamp.type=CreateTime" in message
    assert "--add-config message.timestamp.type=LogAppendTime,retention.ms=-1" in message


def test_node_stops_on_refused_topic(kafka_bootstrap: str, admin: AdminClient, topic_name: str) -> None:
    _create(admin, topic_name, {**GOOD, "cleanup.policy": "compact"})
    node = KafkaNode(
        kafka_bootstrap,
        topic_name,
        NodeSettings(node="n"),
        ["a"],
        IntervalSchedule({"a": 1000}),
        lambda d: None,
    )
    node.start()
    try:
        assert not node.wait_live(30)
        assert isinstance(node.error, TopicConfigError)
        assert not node.status.running
        assert "cleanup.policy=compact" in (node.status.error or "")
    finally:
        node.stop(5)


def test_three_replicas(kafka_cluster3: KafkaCluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_cluster3.bootstrap_servers})
    info = ensure_topic(admin, topic_name, replication_factor=3, min_insync_replicas=2)
    assert info.created
    partition = admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[0]
    assert len(partition.replicas) == 3
    assert _config(admin, topic_name)["min.insync.replicas"] == "2"
