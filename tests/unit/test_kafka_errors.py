"""What retrying cannot fix, without a broker: Kafka's error codes fed to the runtime through fake admin clients.

Reproduced: a denied DescribeConfigs was retried for ever (the replica looked stalled); a denied DeleteRecords only
warned while the topic grew without bound; a record larger than the topic's limit was retried for ever.
(A broker that enforces ACLs comes with the security work; these feed the runtime the codes such a broker returns.)
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from celery_kafka_beat.protocol import NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime import KafkaNode, ensure_topic
from celery_kafka_beat.runtime import kafka as kafka_module
from celery_kafka_beat.runtime.topic import KafkaAccessError

DENIED = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)


def _failed(error: KafkaError) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(KafkaException(error))
    return future


class _Partitions:
    def __init__(self, error: KafkaError | None = None) -> None:
        self.error = error
        self.partitions = {0: object()}


class _Metadata:
    def __init__(self, topic: str, error: KafkaError | None = None) -> None:
        self.topics = {topic: _Partitions(error)}


class FakeAdmin:
    """An AdminClient whose topic exists; ``deny`` names the operations Kafka refuses."""

    def __init__(self, topic: str, deny: set[str]) -> None:
        self.topic = topic
        self.deny = deny
        self.calls: list[str] = []

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> _Metadata:
        self.calls.append("list_topics")
        return _Metadata(self.topic, DENIED if "describe" in self.deny else None)

    def describe_configs(self, resources: list[Any], request_timeout: float = 0) -> dict[Any, Future[Any]]:
        self.calls.append("describe_configs")
        future: Future[Any]
        if "describe-configs" in self.deny:
            future = _failed(DENIED)
        else:
            future = Future()
            future.set_result({})
        return {resources[0]: future}

    def delete_records(self, partitions: list[TopicPartition], operation_timeout: float = 0) -> dict[Any, Future[Any]]:
        self.calls.append("delete_records")
        return {partitions[0]: _failed(DENIED)}


@pytest.mark.parametrize(("deny", "operation"), [("describe-configs", "DescribeConfigs"), ("describe", "Describe")])
def test_a_denied_topic_check_fails_at_once_naming_the_permission(deny: str, operation: str) -> None:
    admin = FakeAdmin("t", {deny})
    started = time.monotonic()
    with pytest.raises(KafkaAccessError, match=f"--operation {operation} --topic t"):
        ensure_topic(admin, "t")  # type: ignore[arg-type]
    assert time.monotonic() - started < 1


def _node(**kwargs: Any) -> KafkaNode:
    periods = {"e": 1000}
    return KafkaNode("127.0.0.1:9", "t", NodeSettings(node="n"), periods, IntervalSchedule(periods), lambda d: None)


def test_a_node_denied_its_topic_check_stops_instead_of_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: Any, **kwargs: Any) -> None:
        raise KafkaAccessError("Kafka denied describe-configs on sync topic 't'")

    monkeypatch.setattr(kafka_module, "ensure_topic", denied)
    node = _node()
    node.start()
    assert node.join(5)
    assert isinstance(node.error, KafkaAccessError)
    assert not node.running


def test_a_denied_delete_is_said_loudly_once_and_not_repeated_every_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    node = _node()
    admin = FakeAdmin("t", {"delete"})
    node._admin = admin  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="celery_kafka_beat.runtime.kafka"):
        node._truncate(100)
        node._truncate(200)
    assert admin.calls == ["delete_records"]  # the second is not tried within the hour
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "--operation Delete --topic t" in errors[0]
    assert "grows without bound" in errors[0]


def test_a_record_refused_as_too_large_makes_the_next_ones_smaller(caplog: pytest.LogCaptureFixture) -> None:
    node = _node()
    before = node._record_budget
    with caplog.at_level(logging.ERROR, logger="celery_kafka_beat.runtime.kafka"):
        node._too_large(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), 300_000)
    assert node._record_budget == min(before, 300_000) // 2
    assert any("max.message.bytes" in r.getMessage() for r in caplog.records)
    node._too_large(KafkaError(KafkaError._TIMED_OUT), 300_000)  # other errors change nothing
    assert node._record_budget == min(before, 300_000) // 2
