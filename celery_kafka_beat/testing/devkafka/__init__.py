"""Run a real Apache Kafka broker locally, assembled from Maven Central jars (no Docker, no tarball).

* :func:`assemble` downloads ``org.apache.kafka:kafka_2.13`` and its runtime dependencies with Maven once and
  caches them (see :func:`devkafka_home`).
* :class:`KafkaCluster` runs a 1- or 3-node KRaft cluster on loopback, with fault injection for tests (crashes,
  pauses, brokers whose wall clock can be stepped, partition leader moves).
* ``python -m celery_kafka_beat.testing.devkafka {fetch,start,stop,status}`` is the command-line front end.

See docs/devkafka.md.
"""

from .assembly import (
    DEFAULT_KAFKA_VERSION,
    TESTED_KAFKA_VERSIONS,
    DevKafkaError,
    KafkaDistribution,
    assemble,
    devkafka_home,
)
from .cluster import KafkaCluster, PartitionState, new_cluster_id
from .faketime import find_libfaketime

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "TESTED_KAFKA_VERSIONS",
    "DevKafkaError",
    "KafkaCluster",
    "KafkaDistribution",
    "PartitionState",
    "assemble",
    "devkafka_home",
    "find_libfaketime",
    "new_cluster_id",
]
