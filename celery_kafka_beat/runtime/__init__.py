"""The Kafka runtime: the imperative shell that runs the protocol core against a real sync topic."""

from celery_kafka_beat.runtime.kafka import (
    DispatchCallback,
    KafkaNode,
    LogRecord,
    NodeStatus,
    client_config,
    monotonic_ms,
    read_cluster_state,
    read_topic,
)
from celery_kafka_beat.runtime.topic import TOPIC_CONFIG, TopicConfigError, TopicInfo, ensure_topic

__all__ = [
    "TOPIC_CONFIG",
    "DispatchCallback",
    "KafkaNode",
    "LogRecord",
    "NodeStatus",
    "TopicConfigError",
    "TopicInfo",
    "client_config",
    "ensure_topic",
    "monotonic_ms",
    "read_cluster_state",
    "read_topic",
]
