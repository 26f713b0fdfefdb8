"""Run a real Apache Kafka broker locally, assembled from Maven Central jars (no Docker, no tarball).

* :func:`assemble` downloads ``org.apache.kafka:kafka_2.13`` and its runtime dependencies with Maven once and
  caches them (see :func:`devkafka_home`).
* :class:`KafkaCluster` runs a 1- or 3-node KRaft cluster on loopback, with fault injection for tests.
* ``python -m celery_kafka_beat.devkafka {fetch,start,stop,status}`` is the command-line front end.

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
from .cluster import KafkaCluster, new_cluster_id

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "TESTED_KAFKA_VERSIONS",
    "DevKafkaError",
    "KafkaCluster",
    "KafkaDistribution",
    "assemble",
    "devkafka_home",
    "new_cluster_id",
]
