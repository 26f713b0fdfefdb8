"""Shared fixtures: real Kafka brokers for integration tests (see docs/devkafka.md).

* ``kafka_bootstrap`` (session): bootstrap servers of a 1-node cluster started for the session, or of the
  existing cluster named by ``$CKB_KAFKA_BOOTSTRAP``. Fails (never skips) when Kafka is unavailable.
* ``kafka_cluster3`` (session): a 3-node :class:`KafkaCluster`, started only if a test requests it. Tests that
  kill, stop or pause brokers must bring them back (``restart_broker`` / ``resume_broker``) before returning.
* ``admin`` (session): an ``AdminClient`` on ``kafka_bootstrap``.
* ``topic_name`` (function): a unique topic name (the topic is not created).
* ``redis_url`` (session): a Celery broker URL of a Redis server started for the session from the system's
  ``redis-server`` (Debian's package; ``.ci/run`` installs it), or ``$CKB_REDIS_URL``. Fails (never skips) when
  Redis is unavailable.

Tests using these fixtures are marked ``kafka`` / ``kafka3`` automatically, so ``-m "not kafka"`` skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from celery_kafka_beat.devkafka import DevKafkaError, KafkaCluster

BOOTSTRAP_ENV = "CKB_KAFKA_BOOTSTRAP"
REDIS_ENV = "CKB_REDIS_URL"
# Why 15 s: redis-server answers PING within milliseconds of starting; a loaded CI machine still fits.
_REDIS_START_TIMEOUT_S = 15.0
# Why 3 s (default 9 s): after a broker crash the controller fences it and moves leadership once this expires;
# fault tests then wait ~3 s instead of ~9 s.
CLUSTER3_SESSION_TIMEOUT_MS = 3000
# Why 15 s: an existing cluster on loopback/LAN answers metadata in milliseconds; a slow remote one still fits.
_EXISTING_CLUSTER_TIMEOUT_S = 15.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the Kafka fixtures they use (directly or through other fixtures)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "kafka_bootstrap" in names:
            item.add_marker(pytest.mark.kafka)
        if "kafka_cluster3" in names:
            item.add_marker(pytest.mark.kafka3)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a running Kafka (existing via $CKB_KAFKA_BOOTSTRAP, else a fresh 1-node one)."""
    existing = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if existing:
        admin = AdminClient({"bootstrap.servers": existing})
        try:
            admin.list_topics(timeout=_EXISTING_CLUSTER_TIMEOUT_S)
        except KafkaException as exc:
            raise DevKafkaError(f"${BOOTSTRAP_ENV}={existing} is not reachable: {exc}") from exc
        yield existing
        return
    with KafkaCluster(nodes=1) as cluster:  # a DevKafkaError here errors every Kafka test: intended
        yield cluster.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[KafkaCluster]:
    """A 3-node cluster (RF 3, min ISR 2) with fast broker fencing, for fault-injection tests."""
    with KafkaCluster(nodes=3, broker_session_timeout_ms=CLUSTER3_SESSION_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient connected to ``kafka_bootstrap``."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A unique, valid topic name mentioning the test (the topic itself is not created)."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]
    return f"ckb-{test}-{uuid.uuid4().hex}"


class RedisUnavailable(RuntimeError):
    """The end-to-end tests' Celery broker cannot be started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(url: str) -> bool:
    import redis  # noqa: PLC0415 - only the e2e tests need it

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Celery broker URL of a running Redis (existing via $CKB_REDIS_URL, else a fresh redis-server)."""
    existing = os.environ.get(REDIS_ENV, "").strip()
    if existing:
        if not _redis_ping(existing):
            raise RedisUnavailable(f"${REDIS_ENV}={existing} does not answer PING")
        yield existing
        return
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise RedisUnavailable(
            "redis-server is not installed: apt-get install redis-server (bash .ci/run does this), "
            f"or set ${REDIS_ENV} to a Redis you run"
        )
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="ckb-redis-") as workdir:
        log = Path(workdir) / "redis.log"
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + _REDIS_START_TIMEOUT_S
            while not _redis_ping(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RedisUnavailable(f"redis-server on port {port} did not start:\n{tail}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
