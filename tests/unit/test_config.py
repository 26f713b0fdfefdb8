"""KafkaScheduler's settings: defaults, conversions, and an error naming the setting for each bad value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_kafka_beat.config import SETTINGS, ConfigError, KafkaBeatConfig, default_node_name
from celery_kafka_beat.protocol import CatchUp, DeliveryMode

BASE = {"kafka_beat_bootstrap_servers": "k1:9092"}


def load(**conf: Any) -> KafkaBeatConfig:
    return KafkaBeatConfig.from_conf({**BASE, **conf})


def test_defaults() -> None:
    config = load()
    assert config.bootstrap_servers == "k1:9092"
    assert config.topic == "celery-kafka-beat"
    assert (config.lease_ms, config.heartbeat_ms, config.decision_lead_ms) == (3000, 1000, 250)
    assert config.catchup is CatchUp.ONCE
    assert config.catchup_window_ms == 3_600_000
    assert config.delivery is DeliveryMode.AT_LEAST_ONCE
    assert config.create_topic is True
    assert config.node_name == default_node_name()
    settings = config.node_settings()
    settings.validate()
    assert settings.node == config.node_name


def test_durations_accept_seconds_and_timedeltas() -> None:
    config = load(kafka_beat_lease=timedelta(milliseconds=600), kafka_beat_heartbeat=0.2, kafka_beat_decision_lead=0)
    assert (config.lease_ms, config.heartbeat_ms, config.decision_lead_ms) == (600, 200, 0)
    assert load(kafka_beat_lease=1).heartbeat_ms == 333  # a third of the lease unless set


def test_bootstrap_forms() -> None:
    assert load(kafka_beat_bootstrap_servers=["a:1", " b:2 "]).bootstrap_servers == "a:1,b:2"
    derived = KafkaBeatConfig.from_conf({"broker_url": "confluentkafka://user:pw@k9:9093"})
    assert derived.bootstrap_servers == "k9:9093"


def test_policies_are_case_and_underscore_tolerant() -> None:
    config = load(kafka_beat_catchup="ALL", kafka_beat_delivery="at_most_once")
    assert config.catchup is CatchUp.ALL
    assert config.delivery is DeliveryMode.AT_MOST_ONCE


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"kafka_beat_bootstrap_servers": None}, "kafka_beat_bootstrap_servers is not set"),
        ({"kafka_beat_bootstrap_servers": "k1"}, "'k1' is not 'host:port'"),
        ({"kafka_beat_bootstrap_servers": "k1:99999"}, "is not 'host:port'"),
        ({"kafka_beat_bootstrap_servers": 9092}, "must be a non-empty 'host:port"),
        ({"kafka_beat_topic": "bad topic"}, "kafka_beat_topic='bad topic'"),
        ({"kafka_beat_lease": "3s"}, "kafka_beat_lease='3s': must be a number of seconds"),
        ({"kafka_beat_lease": 0.01}, "kafka_beat_lease=0.01: must be at least 0.05 s"),
        ({"kafka_beat_lease": float("nan")}, "kafka_beat_lease=nan"),
        ({"kafka_beat_heartbeat": 2}, "kafka_beat_heartbeat=2 s is more than half of kafka_beat_lease=3 s"),
        ({"kafka_beat_catchup": "sometimes"}, "must be one of 'skip', 'once', 'all'"),
        ({"kafka_beat_delivery": "exactly-once"}, "must be one of 'at-most-once', 'at-least-once'"),
        ({"kafka_beat_client_config": "ssl"}, "must be a dict of librdkafka settings"),
        ({"kafka_beat_client_config": {"bootstrap.servers": "x:1"}}, "set kafka_beat_bootstrap_servers instead"),
        ({"kafka_beat_client_config": {"ssl.ca.location": ["a"]}}, "must be a string, number or bool"),
        ({"kafka_beat_topic_replication_factor": 0}, "must be a positive integer"),
        ({"kafka_beat_create_topic": "yes"}, "must be True or False"),
        ({"kafka_beat_node_name": ""}, "kafka_beat_node_name=''"),
        ({"kafka_beat_lease_ms": 3000}, "unknown setting 'kafka_beat_lease_ms': did you mean 'kafka_beat_lease'?"),
    ],
)
def test_bad_values_name_the_setting_and_the_fix(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(**conf)
    assert message in str(info.value)


def test_client_settings_never_appear_in_repr_or_description() -> None:
    config = load(kafka_beat_client_config={"sasl.password": "hunter2", "security.protocol": "SASL_SSL"})
    assert config.client_config["sasl.password"] == "hunter2"
    shown = repr(config) + str(config.client_config) + repr(config.client_config) + str(config.describe())
    assert "hunter2" not in shown
    assert "SASL_SSL" not in shown
    assert "sasl.password" in str(config.describe())


def test_every_setting_is_documented() -> None:
    with (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").open() as doc:
        text = doc.read()
    missing = [name for name in SETTINGS if f"`{name}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
