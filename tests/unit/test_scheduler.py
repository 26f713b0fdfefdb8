"""KafkaScheduler without Kafka: the banner's lazy instance, start-up validation, task ids."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.schedules import schedule

from celery_kafka_beat import KafkaScheduler
from celery_kafka_beat.config import ConfigError
from celery_kafka_beat.scheduler import tick_iso, tick_task_id


class EveryOtherTuesday(schedule):  # type: ignore[misc]
    """A custom schedule class: its timing cannot be converted to a pure timetable."""


def make_app(**conf: Any) -> Celery:
    app = Celery("unit", set_as_current=False)
    # Nothing listens on port 9: anything that tried to connect would hang or fail, not succeed.
    app.conf.update(broker_url="memory://", kafka_beat_bootstrap_servers="127.0.0.1:9", **conf)
    return app


def node_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ckb-node")]


def test_the_lazy_banner_instance_never_connects() -> None:
    before = node_threads()
    app = make_app(kafka_beat_node_name="n1", kafka_beat_topic="t1")
    scheduler = KafkaScheduler(app, lazy=True)
    info = scheduler.info
    assert "kafka-beat: kafka -> 127.0.0.1:9 topic t1" in info
    assert "kafka-beat: node -> n1" in info
    assert "delivery at-least-once, catch-up once" in info
    assert node_threads() == before
    scheduler.close()  # closing a lazy instance is harmless


def test_an_unsupported_schedule_is_refused_at_start_up_naming_the_entry() -> None:
    app = make_app(beat_schedule={"odd": {"task": "x", "schedule": EveryOtherTuesday(timedelta(days=14))}})
    before = node_threads()
    with pytest.raises(ConfigError, match="entry 'odd'"):
        KafkaScheduler(app)
    assert node_threads() == before


def test_bad_settings_are_refused_before_anything_connects() -> None:
    app = make_app(kafka_beat_lease="soon")
    with pytest.raises(ConfigError, match="kafka_beat_lease='soon'"):
        KafkaScheduler(app)
    with pytest.raises(ConfigError, match="kafka_beat_lease='soon'"):
        _ = KafkaScheduler(app, lazy=True).info  # the banner shows the error too


def test_task_ids_are_deterministic_per_topic_entry_and_tick() -> None:
    assert tick_task_id("t", "e", 1000) == tick_task_id("t", "e", 1000)
    assert len({tick_task_id("t", "e", 1000), tick_task_id("t", "e", 2000), tick_task_id("u", "e", 1000)}) == 3
    assert tick_iso(1_795_000_000_000) == "2026-11-18T11:06:40.000+00:00"
