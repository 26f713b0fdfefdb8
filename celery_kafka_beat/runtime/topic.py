"""The sync topic: create it with the one configuration the protocol is safe with, or refuse one that is not.

The protocol needs exactly one partition (one total order), broker-assigned timestamps (``LogAppendTime``: the
lease clock) and a topic that never deletes a record on its own: nodes write snapshots and then delete what a
snapshot covers with ``DeleteRecords`` themselves. Compaction or finite retention would silently delete state, so a
topic configured that way is refused with a message saying what was found and what to change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # public as confluent_kafka.admin.ConfigResource
from confluent_kafka.cimpl import NewTopic

__all__ = [
    "AUTHORIZATION_ERRORS",
    "MAX_MESSAGE_BYTES",
    "TOPIC_CONFIG",
    "KafkaAccessError",
    "TopicConfigError",
    "TopicInfo",
    "access_error",
    "ensure_topic",
    "topic_config",
]

log = logging.getLogger(__name__)

#: Largest record the topic accepts: a snapshot part of ``chunk_chars`` (256 Ki characters by default) can grow
#: to about twice that in bytes once its JSON is escaped inside the record's JSON; 4 MiB leaves ample room.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

#: The configuration a created topic gets (besides ``min.insync.replicas`` when asked for).
TOPIC_CONFIG: Final[Mapping[str, str]] = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "message.timestamp.type": "LogAppendTime",
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
}

# Why 30 s: creating a topic and seeing it in metadata takes milliseconds on a healthy cluster; past half a minute
# the cluster is not usable and the caller should hear about it.
DEFAULT_TIMEOUT_S: Final = 30.0
# Why 0.1 s: a freshly created topic usually shows up in metadata within one or two rounds of this.
_RETRY_S: Final = 0.1


class TopicConfigError(RuntimeError):
    """The sync topic exists but is configured in a way that would lose or corrupt the schedule state."""


class KafkaAccessError(TopicConfigError):
    """Kafka refused an operation for lack of a permission (an ACL): retrying cannot fix it, so it is not retried."""


#: Error codes that mean "not allowed": the principal lacks an ACL. Retrying never helps.
AUTHORIZATION_ERRORS: Final = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED,
    }
)

#: The ACL operation (kafka-acls.sh --operation) each of our operations needs.
_ACL: Final = {
    "describe": "Describe",
    "describe-configs": "DescribeConfigs",
    "create": "Create",
    "read": "Read",
    "write": "Write",
    "delete": "Delete",
}
#: What each operation needs, for the error message (Kafka ACL operation on resource).
_NEEDS: Final = {
    "describe": "Describe on the topic",
    "describe-configs": "DescribeConfigs on the topic",
    "create": "Create on the cluster (or on the topic), or create the topic by hand",
    "read": "Read on the topic",
    "write": "Write on the topic (and IdempotentWrite on the cluster for Kafka before 2.8)",
    "delete": "Delete on the topic",
}


def _error_of(exc: BaseException) -> KafkaError | None:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err if isinstance(err, KafkaError) else None


def access_error(topic: str, operation: str, err: KafkaError | BaseException) -> KafkaAccessError | None:
    """A :class:`KafkaAccessError` naming the missing permission if ``err`` is an authorization failure."""
    error = err if isinstance(err, KafkaError) else _error_of(err)
    if error is None or error.code() not in AUTHORIZATION_ERRORS:
        return None
    return KafkaAccessError(
        f"Kafka denied {operation} on sync topic {topic!r} ({error.name()}): the principal celery-kafka-beat "
        f"connects as needs {_NEEDS.get(operation, operation)}. Grant it, e.g. kafka-acls.sh --bootstrap-server "
        f"<servers> --add --allow-principal User:<name> --operation {_ACL.get(operation, operation)} --topic {topic}"
    )


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What :func:`ensure_topic` found (or made)."""

    topic: str
    partitions: int
    config: Mapping[str, str]
    created: bool


def topic_config(min_insync_replicas: int | None = None) -> dict[str, str]:
    """The configuration :func:`ensure_topic` creates the topic with."""
    config = dict(TOPIC_CONFIG)
    if min_insync_replicas is not None:
        config["min.insync.replicas"] = str(min_insync_replicas)
    return config


def ensure_topic(
    admin_or_conf: AdminClient | Mapping[str, Any],
    topic: str,
    replication_factor: int | None = None,
    *,
    create: bool = True,
    min_insync_replicas: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> TopicInfo:
    """Make sure ``topic`` exists with a configuration the protocol is safe with.

    ``admin_or_conf`` is an ``AdminClient`` or a librdkafka configuration dict (``bootstrap.servers`` and security
    settings) to make one from. A missing topic is created (unless ``create`` is false: then
    :class:`TopicConfigError`) with one partition, ``replication_factor`` replicas (``None``: the broker's
    ``default.replication.factor``) and :data:`TOPIC_CONFIG`; a topic another node created at the same moment is
    accepted if it validates. An existing topic is validated and refused with :class:`TopicConfigError` when it
    has more than one partition, ``CreateTime`` timestamps, compaction, or finite ``retention.ms`` /
    ``retention.bytes``. Raises ``KafkaException`` when the cluster does not answer within ``timeout`` seconds.
    """
    admin = AdminClient(dict(admin_or_conf)) if isinstance(admin_or_conf, Mapping) else admin_or_conf
    deadline = time.monotonic() + timeout
    created = False
    partitions = _partitions(admin, topic, deadline)
    if partitions is None:
        if not create:
            raise TopicConfigError(
                f"sync topic {topic!r} does not exist and topic creation is disabled: create it with "
                f"{_create_command(topic, replication_factor, min_insync_replicas)}"
            )
        created = _create(admin, topic, replication_factor, min_insync_replicas, deadline)
        partitions = _wait_partitions(admin, topic, deadline)
    config = _describe(admin, topic, deadline)
    _validate(topic, partitions, config)
    if created:
        log.info(
            "created sync topic %r (%d partition, config %s)", topic, partitions, topic_config(min_insync_replicas)
        )
    return TopicInfo(topic=topic, partitions=partitions, config=config, created=created)


# -- checks ------------------------------------------------------------------------------------------------------


def _validate(topic: str, partitions: int, config: Mapping[str, str]) -> None:
    problems: list[str] = []
    fixes: list[str] = []
    if partitions != 1:
        problems.append(
            f"it has {partitions} partitions, but the protocol needs exactly 1 (one total order of records); "
            "Kafka cannot reduce partitions: delete the topic and let the nodes create it again "
            f"(`kafka-topics.sh --bootstrap-server <servers> --delete --topic {topic}`; the schedule state restarts "
            "from scratch) or configure a new topic name"
        )
    ts_type = config.get("message.timestamp.type", "")
    if ts_type != "LogAppendTime":
        problems.append(
            f"message.timestamp.type={ts_type or '<unset>'}, but leases are timed by the broker's clock and need "
            "LogAppendTime"
        )
        fixes.append("message.timestamp.type=LogAppendTime")
    policy = config.get("cleanup.policy", "")
    if "compact" in {p.strip() for p in policy.split(",")}:
        problems.append(
            f"cleanup.policy={policy}: compaction would delete records the schedule state depends on; the nodes "
            "drop what a snapshot covers themselves"
        )
        fixes.append("cleanup.policy=delete")
    for key in ("retention.ms", "retention.bytes"):
        value = config.get(key, "")
        if value != "-1":
            problems.append(f"{key}={value or '<unset>'}: finite retention would delete the schedule state")
            fixes.append(f"{key}=-1")
    if not problems:
        return
    message = f"sync topic {topic!r} is not safe to use: " + "; ".join(problems) + "."
    if fixes:
        message += (
            f" Fix it with: kafka-configs.sh --bootstrap-server <servers> --alter --entity-type topics "
            f"--entity-name {topic} --add-config {','.join(fixes)}"
        )
    raise TopicConfigError(message)


def _create_command(topic: str, replication_factor: int | None, min_insync_replicas: int | None) -> str:
    config = topic_config(min_insync_replicas)
    parts = [
        f"kafka-topics.sh --bootstrap-server <servers> --create --topic {topic} --partitions 1",
        *([f"--replication-factor {replication_factor}"] if replication_factor is not None else []),
        *(f"--config {k}={v}" for k, v in config.items()),
    ]
    return " ".join(parts)


# -- admin calls -------------------------------------------------------------------------------------------------


def _remaining(deadline: float) -> float:
    return max(0.5, deadline - time.monotonic())


def _partitions(admin: AdminClient, topic: str, deadline: float) -> int | None:
    """Number of partitions of ``topic``, or None if it does not exist."""
    while True:
        metadata = admin.list_topics(topic=topic, timeout=_remaining(deadline))
        found = metadata.topics.get(topic)
        if found is None:
            return None
        err = found.error
        if err is None:
            return len(found.partitions)
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        denied = access_error(topic, "describe", err)
        if denied is not None:
            raise denied
        if time.monotonic() >= deadline:
            raise KafkaException(err)
        time.sleep(_RETRY_S)  # e.g. LEADER_NOT_AVAILABLE just after creation


def _wait_partitions(admin: AdminClient, topic: str, deadline: float) -> int:
    while True:
        partitions = _partitions(admin, topic, deadline)
        if partitions:
            return partitions
        if time.monotonic() >= deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"topic {topic!r} did not appear in metadata"))
        time.sleep(_RETRY_S)


def _create(
    admin: AdminClient,
    topic: str,
    replication_factor: int | None,
    min_insync_replicas: int | None,
    deadline: float,
) -> bool:
    """Create the topic; False if another node created it first."""
    new = NewTopic(
        topic,
        num_partitions=1,
        replication_factor=-1 if replication_factor is None else replication_factor,
        config=topic_config(min_insync_replicas),
    )
    future = admin.create_topics([new], request_timeout=_remaining(deadline))[topic]
    try:
        future.result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            log.debug("sync topic %r was created concurrently by another node", topic)
            return False
        denied = access_error(topic, "create", exc)
        if denied is not None:
            raise KafkaAccessError(
                f"{denied} Or create it by hand: {_create_command(topic, replication_factor, min_insync_replicas)}"
            ) from None
        raise
    return True


def _describe(admin: AdminClient, topic: str, deadline: float) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    while True:
        future = admin.describe_configs([resource], request_timeout=_remaining(deadline))[resource]
        try:
            entries = future.result()
        except KafkaException as exc:
            denied = access_error(topic, "describe-configs", exc)
            if denied is not None:
                raise denied from None
            err = exc.args[0] if exc.args else None
            retriable = isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_S)  # a topic just created may not be known to every broker yet
            continue
        return {name: ("" if entry.value is None else str(entry.value)) for name, entry in entries.items()}
