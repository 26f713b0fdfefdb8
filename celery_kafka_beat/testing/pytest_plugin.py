"""A pytest plugin for users' own test suites: a running Kafka and a Celery app configured for ``KafkaScheduler``.

Installed with the package and registered through the ``pytest11`` entry point, so the fixtures are available in
any test suite without a ``conftest.py`` line. Nothing starts unless a test asks for a fixture; importing this
module imports neither Celery nor the Kafka client. See ``docs/testing.md`` ("Testing your own beat schedule").

* ``kafka_beat_bootstrap`` (session): bootstrap servers of a running Kafka. ``$CKB_KAFKA_BOOTSTRAP`` names an
  existing one; otherwise a 1-node Apache Kafka is assembled from Maven Central (needs Java 17+ and Maven; the first
  run downloads it, see ``celery_kafka_beat.testing.devkafka``) and started for the session
  (``$CKB_KAFKA_VERSION`` picks the version). Fails, never skips, when Kafka cannot start.
* ``kafka_beat_topic`` (function): a fresh sync topic name (KafkaScheduler creates the topic).
* ``kafka_beat_app`` (function): a Celery app with the in-memory broker (``memory://``), ``beat_scheduler`` set to
  ``KafkaScheduler`` and ``kafka_beat_bootstrap_servers`` / ``kafka_beat_topic`` set; add your ``beat_schedule``.
* ``kafka_beat_scheduler`` (function): a factory that starts a ``KafkaScheduler`` on an app (``kafka_beat_app`` by
  default) in this process; every scheduler it started is stopped cleanly after the test, and the process's
  SIGTERM/SIGINT handlers (which the scheduler takes over) are restored.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

__all__ = [
    "BOOTSTRAP_ENV",
    "VERSION_ENV",
    "kafka_beat_app",
    "kafka_beat_bootstrap",
    "kafka_beat_scheduler",
    "kafka_beat_topic",
]

BOOTSTRAP_ENV = "CKB_KAFKA_BOOTSTRAP"
VERSION_ENV = "CKB_KAFKA_VERSION"
# Why 15 s: an existing cluster on loopback or a LAN answers metadata in milliseconds; a slow remote one still fits.
_EXISTING_CLUSTER_TIMEOUT_S = 15.0


@pytest.fixture(scope="session")
def kafka_beat_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a running Kafka: ``$CKB_KAFKA_BOOTSTRAP``, else a 1-node Kafka started for the session."""
    from celery_kafka_beat.testing.devkafka import DEFAULT_KAFKA_VERSION, DevKafkaError, KafkaCluster  # noqa: PLC0415

    existing = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if existing:
        from confluent_kafka import KafkaException  # noqa: PLC0415 - the plugin must not import it when unused
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        try:
            AdminClient({"bootstrap.servers": existing}).list_topics(timeout=_EXISTING_CLUSTER_TIMEOUT_S)
        except KafkaException as exc:
            raise DevKafkaError(f"${BOOTSTRAP_ENV}={existing} is not reachable: {exc}") from exc
        yield existing
        return
    version = os.environ.get(VERSION_ENV, "").strip() or DEFAULT_KAFKA_VERSION
    with KafkaCluster(nodes=1, version=version) as cluster:  # a DevKafkaError errors every test using it: intended
        yield cluster.bootstrap_servers


@pytest.fixture
def kafka_beat_topic(request: pytest.FixtureRequest) -> str:
    """A unique, valid sync topic name mentioning the test (the topic itself is not created)."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]
    return f"ckb-{test}-{uuid.uuid4().hex}"


@pytest.fixture
def kafka_beat_app(kafka_beat_bootstrap: str, kafka_beat_topic: str) -> Iterator[Any]:
    """A Celery app (not the current app) configured for KafkaScheduler on ``kafka_beat_topic``; closed after the
    test."""
    from celery import Celery  # noqa: PLC0415

    app = Celery("kafka-beat-test", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        beat_scheduler="celery_kafka_beat.scheduler:KafkaScheduler",
        kafka_beat_bootstrap_servers=kafka_beat_bootstrap,
        kafka_beat_topic=kafka_beat_topic,
    )
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def kafka_beat_scheduler(kafka_beat_app: Any) -> Iterator[Callable[..., Any]]:
    """``start(app=None, **kwargs)`` starts a KafkaScheduler on ``app`` (default ``kafka_beat_app``) and returns it;
    call its ``tick()`` in a loop as beat does. All are closed after the test."""
    started: list[Any] = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def start(app: Any = None, **kwargs: Any) -> Any:
        from celery_kafka_beat.scheduler import KafkaScheduler  # noqa: PLC0415

        scheduler = KafkaScheduler(app=app if app is not None else kafka_beat_app, **kwargs)
        started.append(scheduler)
        return scheduler

    try:
        yield start
    finally:
        try:
            for scheduler in reversed(started):
                scheduler.close()
        finally:
            for signum, handler in handlers.items():
                if handler is not None:  # None: installed from C, which Python cannot put back
                    signal.signal(signum, handler)
