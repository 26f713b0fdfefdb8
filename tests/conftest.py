"""Shared fixtures: real Kafka brokers for integration tests (see docs/devkafka.md).

* ``kafka_bootstrap`` (session): bootstrap servers of a 1-node cluster started for the session (of
  ``$CKB_KAFKA_VERSION``, default the newest pinned version), or of the existing cluster named by
  ``$CKB_KAFKA_BOOTSTRAP``; the package's pytest plugin provides it (``kafka_beat_bootstrap``). Fails (never skips)
  when Kafka is unavailable.
* ``kafka_cluster3`` (session): a 3-node :class:`KafkaCluster`, started only if a test requests it. Tests that
  kill, stop or pause brokers must bring them back (``restart_broker`` / ``resume_broker``) before returning.
* ``kafka_cluster3_skewable`` (session): another 3-node cluster whose broker ``SKEWABLE_BROKER`` (2) runs under
  libfaketime, for broker clock steps. Tests must set its clock offset back to 0 and move the leaders they moved
  onto it away again before returning. Fails (never skips) when libfaketime is not installed.
* ``admin`` (session): an ``AdminClient`` on ``kafka_bootstrap``.
* ``topic_name`` (function): a unique topic name (the topic is not created).
* ``redis_url`` (session): a Celery broker URL of a Redis server started for the session from the system's
  ``redis-server`` (Debian's package; ``.ci/run`` installs it), or ``$CKB_REDIS_URL``. Fails (never skips) when
  Redis is unavailable.

Tests using these fixtures are marked ``kafka`` / ``kafka3`` automatically, so ``-m "not kafka"`` skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from confluent_kafka.admin import AdminClient

from celery_kafka_beat.testing.devkafka import KafkaCluster
from celery_kafka_beat.testing.devredis import LocalRedis, RedisUnavailable, redis_answers

REDIS_ENV = "CKB_REDIS_URL"
# Why 3 s (default 9 s): after a broker crash the controller fences it and moves leadership once this expires;
# fault tests then wait ~3 s instead of ~9 s.
CLUSTER3_SESSION_TIMEOUT_MS = 3000
#: The broker of ``kafka_cluster3_skewable`` whose wall clock tests step (the KRaft quorum leader is another one).
SKEWABLE_BROKER = 2
# Why 100 ms (default 1 s): after a leader election the followers wait this long before they fetch from the new
# leader, and an acks=all append waits for them: with the default, every leader move held appends for 1.0-2.2 s
# (measured), close enough to a 3 s lease to end the replicas' sessions. Clock-step tests move leaders to step the
# clock; with 100 ms a move holds appends for 0.15-0.6 s.
SKEWABLE_CLUSTER_PROPS = {"replica.fetch.backoff.ms": 100}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the Kafka fixtures they use (directly or through other fixtures)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "kafka_bootstrap" in names or "kafka_beat_bootstrap" in names:
            item.add_marker(pytest.mark.kafka)
        if "kafka_cluster3" in names:
            item.add_marker(pytest.mark.kafka3)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_beat_bootstrap: str) -> str:
    """Bootstrap servers of a running Kafka: the plugin's fixture (``celery_kafka_beat.testing.pytest_plugin``:
    $CKB_KAFKA_BOOTSTRAP, else a fresh 1-node cluster of $CKB_KAFKA_VERSION), so that the tests of the plugin and the
    rest share one broker."""
    return kafka_beat_bootstrap


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[KafkaCluster]:
    """A 3-node cluster (RF 3, min ISR 2) with fast broker fencing, for fault-injection tests."""
    with KafkaCluster(nodes=3, broker_session_timeout_ms=CLUSTER3_SESSION_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_cluster3_skewable() -> Iterator[KafkaCluster]:
    """A 3-node cluster like ``kafka_cluster3`` whose broker ``SKEWABLE_BROKER`` has a steppable wall clock."""
    with KafkaCluster(
        nodes=3,
        broker_session_timeout_ms=CLUSTER3_SESSION_TIMEOUT_MS,
        clock_skewable=(SKEWABLE_BROKER,),
        extra_props=SKEWABLE_CLUSTER_PROPS,
    ) as cluster:  # a DevKafkaError here (no libfaketime) errors every test that uses it: intended
        yield cluster


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient connected to ``kafka_bootstrap``."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_name(kafka_beat_topic: str) -> str:
    """A unique, valid topic name mentioning the test (the topic itself is not created): the plugin's."""
    return kafka_beat_topic


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Celery broker URL of a running Redis (existing via $CKB_REDIS_URL, else a fresh redis-server)."""
    existing = os.environ.get(REDIS_ENV, "").strip()
    if existing:
        parts = urlsplit(existing)
        if not redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
            raise RedisUnavailable(f"${REDIS_ENV}={existing} does not answer PING")
        yield existing
        return
    with LocalRedis() as redis:  # a RedisUnavailable here errors every e2e test: intended
        yield redis.url
