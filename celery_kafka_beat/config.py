"""KafkaScheduler's settings: read from the Celery app's configuration (``kafka_beat_*`` keys), validated once at
start-up. Every error names the setting and says what to change. ``docs/configuration.md`` documents each one.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from celery.exceptions import ImproperlyConfigured

from celery_kafka_beat.protocol import MAX_LEASE_MS, CatchUp, DeliveryMode, NodeSettings

__all__ = ["PREFIX", "SETTINGS", "ConfigError", "KafkaBeatConfig", "default_node_name"]

PREFIX: Final = "kafka_beat_"

#: Every setting with its default (None: required, or computed from others). Kept in step with
#: docs/configuration.md.
SETTINGS: Final[Mapping[str, Any]] = {
    "kafka_beat_bootstrap_servers": None,
    "kafka_beat_topic": "celery-kafka-beat",
    "kafka_beat_node_name": None,
    # Why 3 s: a dead replica's entries move within about 3 s (RedBeat's default lock is 25 min), while a
    # replica survives a 2 s stall (GC, a slow broker round trip) without losing its entries.
    "kafka_beat_lease": 3.0,
    # Why a third of the lease: two heartbeats may be lost or late before the lease is in danger.
    "kafka_beat_heartbeat": None,
    # Why 0.25 s: a decision is appended and read back (a few ms on a healthy cluster) before the tick is due,
    # so ticks go out on time; a longer lead only widens the window in which a crash between decision and publish
    # loses the tick (at-most-once) or leaves it to the next owner (at-least-once).
    "kafka_beat_decision_lead": 0.25,
    # Why 'once': what stock Celery beat does after downtime (the latest overdue run, once), so switching
    # schedulers changes nothing here.
    "kafka_beat_catchup": "once",
    # Why 1 h: with catch-up 'all', at most an hour of missed ticks is replayed after an outage.
    "kafka_beat_catchup_window": 3600.0,
    # Why at-least-once: its anomaly window (publish to confirmation: milliseconds) is far smaller than
    # at-most-once's (decision lead: 0.25 s), and the rare duplicate it allows carries the same task id.
    "kafka_beat_delivery": "at-least-once",
    "kafka_beat_client_config": {},
    "kafka_beat_topic_replication_factor": None,
    "kafka_beat_topic_min_insync_replicas": None,
    # Why True: a first replica on a fresh cluster just works; clusters that forbid topic creation set False.
    "kafka_beat_create_topic": True,
    # Why 5 s: longer than a replica that crash-loops (OOM on start, a bad deploy) usually lives, so it never takes
    # an entry from a healthy owner; short enough that a new replica gets its share soon after it starts.
    "kafka_beat_probation": 5.0,
    # Why 10 min: a partition leader that moved to a broker with a wrong clock is usually moved back by Kafka's
    # preferred-leader election within 5 minutes; a step that lasts twice that is taken as the brokers' new time.
    "kafka_beat_clock_step_hold": 600.0,
}

#: librdkafka settings KafkaScheduler sets itself; overriding them would break the protocol's assumptions.
_MANAGED: Final = {
    "bootstrap.servers": "set kafka_beat_bootstrap_servers instead",
    "group.id": "the sync topic is read by manual assignment, without a consumer group",
    "enable.auto.commit": "nothing is committed: every node reads the whole topic",
    "auto.offset.reset": "must stay 'error' so that deleted records are noticed",
    "enable.idempotence": "must stay true: a retried append must not be duplicated",
    "acks": "must stay 'all': a record is read back only once it is replicated",
    "isolation.level": "must stay 'read_uncommitted': another producer's open transaction would hold every read",
    "enable.auto.offset.store": "nothing is committed",
    "enable.partition.eof": "the node reads the partition continuously",
    "fetch.wait.max.ms": "kept low (10 ms): a decision is read back before it is acted on",
    "fetch.min.bytes": "kept at 1: a decision is read back before it is acted on",
    "linger.ms": "kept at 1 ms: records are small and latency matters",
    "compression.type": "set by KafkaScheduler",
    "message.timeout.ms": "must stay 30 s: the protocol forgets unacknowledged appends after that",
    "message.max.bytes": "must match the topic's max.message.bytes",
}

_TOPIC_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_KAFKA_SCHEMES: Final = ("confluentkafka", "kafka")

_NODE_SUFFIX: str | None = None


class ConfigError(ImproperlyConfigured):  # type: ignore[misc]  # Celery is untyped
    """A ``kafka_beat_*`` setting is missing or wrong; the message says which and how to fix it."""


def default_node_name() -> str:
    """``hostname:pid:suffix``; the random suffix is drawn once per process (so that Celery's banner, built from a
    lazy scheduler, shows the name the running scheduler uses) and again after a fork."""
    global _NODE_SUFFIX
    if _NODE_SUFFIX is None:
        _NODE_SUFFIX = secrets.token_hex(2)
    return f"{socket.gethostname()}:{os.getpid()}:{_NODE_SUFFIX}"


def _forget_suffix() -> None:
    global _NODE_SUFFIX
    _NODE_SUFFIX = None


os.register_at_fork(after_in_child=_forget_suffix)


class _SecretDict(dict[str, Any]):
    """Client settings whose values never reach a log or a traceback."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '***'" for k in self) + "}"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaBeatConfig:
    """The validated settings of one KafkaScheduler."""

    bootstrap_servers: str
    topic: str
    node_name: str
    lease_ms: int
    heartbeat_ms: int
    decision_lead_ms: int
    catchup: CatchUp
    catchup_window_ms: int
    delivery: DeliveryMode
    client_config: Mapping[str, Any] = field(default_factory=_SecretDict, repr=False)
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    create_topic: bool = True
    probation_ms: int = 5000
    clock_hold_ms: int = 600_000

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> KafkaBeatConfig:
        """Read and validate the settings from a Celery app's ``conf``; raise :class:`ConfigError`."""
        _check_unknown(conf)

        def get(key: str) -> Any:
            value = conf.get(key)
            return SETTINGS[key] if value is None else value

        lease_ms = _duration_ms(conf, "kafka_beat_lease", minimum_ms=50)
        if lease_ms > MAX_LEASE_MS:
            raise ConfigError(
                f"kafka_beat_lease={lease_ms / 1000:g} s is longer than {MAX_LEASE_MS / 1000:g} s, the longest lease "
                "the protocol accepts (a replica that finds the schedule state deleted waits that long before it "
                "starts afresh): use a shorter lease"
            )
        heartbeat_ms = (
            _duration_ms(conf, "kafka_beat_heartbeat", minimum_ms=1)
            if conf.get("kafka_beat_heartbeat") is not None
            else max(1, lease_ms // 3)
        )
        if heartbeat_ms > lease_ms // 2:
            raise ConfigError(
                f"kafka_beat_heartbeat={heartbeat_ms / 1000:g} s is more than half of kafka_beat_lease="
                f"{lease_ms / 1000:g} s: one late heartbeat would end the node's session. Set kafka_beat_heartbeat "
                f"to at most {lease_ms // 2 / 1000:g} s (a third of the lease is the default)."
            )
        config = cls(
            bootstrap_servers=_bootstrap(conf),
            topic=_topic(get("kafka_beat_topic")),
            node_name=_node_name(conf.get("kafka_beat_node_name")),
            lease_ms=lease_ms,
            heartbeat_ms=heartbeat_ms,
            decision_lead_ms=_duration_ms(conf, "kafka_beat_decision_lead", minimum_ms=0),
            catchup=_choice(get("kafka_beat_catchup"), "kafka_beat_catchup", CatchUp),
            catchup_window_ms=_duration_ms(conf, "kafka_beat_catchup_window", minimum_ms=0),
            delivery=_choice(get("kafka_beat_delivery"), "kafka_beat_delivery", DeliveryMode),
            client_config=_client_config(get("kafka_beat_client_config")),
            replication_factor=_optional_int(conf, "kafka_beat_topic_replication_factor"),
            min_insync_replicas=_optional_int(conf, "kafka_beat_topic_min_insync_replicas"),
            create_topic=_bool(get("kafka_beat_create_topic"), "kafka_beat_create_topic"),
            probation_ms=_duration_ms(conf, "kafka_beat_probation", minimum_ms=0),
            clock_hold_ms=_duration_ms(conf, "kafka_beat_clock_step_hold", minimum_ms=0),
        )
        try:
            config.node_settings().validate()
        except ValueError as exc:  # combinations the checks above do not cover
            raise ConfigError(f"kafka_beat_* timings do not fit together: {exc}") from None
        return config

    def node_settings(self) -> NodeSettings:
        return NodeSettings(
            node=self.node_name,
            lease_ms=self.lease_ms,
            heartbeat_ms=self.heartbeat_ms,
            decision_lead_ms=self.decision_lead_ms,
            catchup=self.catchup,
            catchup_window_ms=self.catchup_window_ms,
            delivery=self.delivery,
            probation_ms=self.probation_ms,
            clock_hold_ms=self.clock_hold_ms,
        )

    def describe(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the banner and logs; client settings appear by name only."""
        extra = ", ".join(sorted(self.client_config)) or "none"
        return [
            ("kafka", f"{self.bootstrap_servers} topic {self.topic}"),
            ("node", self.node_name),
            (
                "lease",
                f"{self.lease_ms / 1000:g} s (heartbeat {self.heartbeat_ms / 1000:g} s, "
                f"decision lead {self.decision_lead_ms / 1000:g} s)",
            ),
            ("policy", f"delivery {self.delivery.value}, catch-up {self.catchup.value}"),
            ("client settings", extra),
        ]


# -- validation helpers -------------------------------------------------------------------------------------------


def _check_unknown(conf: Mapping[str, Any]) -> None:
    keys = [k for k in _keys(conf) if k.lower().startswith(PREFIX) and k.lower() not in SETTINGS]
    if not keys:
        return
    key = keys[0]
    close = difflib.get_close_matches(key.lower(), list(SETTINGS), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the settings are: {', '.join(SETTINGS)}"
    raise ConfigError(f"unknown setting {key!r}: {hint}")


def _keys(conf: Mapping[str, Any]) -> list[str]:
    try:
        return [str(k) for k in conf]
    except TypeError:
        return []


def _bootstrap(conf: Mapping[str, Any]) -> str:
    value = conf.get("kafka_beat_bootstrap_servers")
    if value is None:
        broker = conf.get("broker_url")
        urls = broker if isinstance(broker, list | tuple) else [broker] if isinstance(broker, str) else []
        hosts = [urlsplit(u).netloc for u in urls if isinstance(u, str) and urlsplit(u).scheme in _KAFKA_SCHEMES]
        if hosts and all(hosts):
            return ",".join(h.rsplit("@", 1)[-1] for h in hosts)
        raise ConfigError(
            "kafka_beat_bootstrap_servers is not set: set it to your Kafka cluster's bootstrap servers, "
            "e.g. app.conf.kafka_beat_bootstrap_servers = 'kafka1:9092,kafka2:9092'"
        )
    if isinstance(value, list | tuple):
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"kafka_beat_bootstrap_servers={value!r}: every item must be a 'host:port' string")
        value = ",".join(v.strip() for v in value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"kafka_beat_bootstrap_servers={value!r}: must be a non-empty 'host:port[,host:port...]' string "
            "or a list of 'host:port' strings"
        )
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"kafka_beat_bootstrap_servers={value!r}: {server.strip()!r} is not 'host:port' "
                "(a comma-separated list of host:port pairs, e.g. 'kafka1:9092,kafka2:9092')"
            )
    return ",".join(s.strip() for s in value.split(","))


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not _TOPIC_RE.match(value) or value in {".", ".."}:
        raise ConfigError(
            f"kafka_beat_topic={value!r}: a Kafka topic name is 1-249 characters of letters, digits, '.', '_' "
            "and '-' (and not '.' or '..')"
        )
    return value


def _node_name(value: Any) -> str:
    if value is None:
        return default_node_name()
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ConfigError(
            f"kafka_beat_node_name={value!r}: must be a non-empty string of at most 200 characters "
            "(leave it unset for hostname:pid:random)"
        )
    return value


def _duration_ms(conf: Mapping[str, Any], key: str, *, minimum_ms: int) -> int:
    value = conf.get(key)
    if value is None:
        value = SETTINGS[key]
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{key}={value!r}: must be a number of seconds (int or float) or a datetime.timedelta")
    if not math.isfinite(seconds) or seconds * 1000 < minimum_ms:
        raise ConfigError(f"{key}={value!r}: must be at least {minimum_ms / 1000:g} s")
    return round(seconds * 1000)


def _choice(value: Any, key: str, enum: type[CatchUp] | type[DeliveryMode]) -> Any:
    options = [m.value for m in enum]
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        normal = value.strip().lower().replace("_", "-")
        for member in enum:
            if member.value == normal:
                return member
    raise ConfigError(f"{key}={value!r}: must be one of {', '.join(repr(o) for o in options)}")


def _client_config(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"kafka_beat_client_config must be a dict of librdkafka settings (e.g. {{'security.protocol': 'SSL'}}), "
            f"got a {type(value).__name__}"
        )
    result = _SecretDict()
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"kafka_beat_client_config: setting names must be strings, got {key!r}")
        if key in _MANAGED:
            raise ConfigError(f"kafka_beat_client_config: {key!r} is managed by KafkaScheduler ({_MANAGED[key]})")
        if not isinstance(item, str | int | float | bool):
            raise ConfigError(
                f"kafka_beat_client_config[{key!r}]: must be a string, number or bool, got a {type(item).__name__}"
            )
        result[key] = item
    return result


def _optional_int(conf: Mapping[str, Any], key: str) -> int | None:
    value = conf.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r}: must be a positive integer (or None for the broker's default)")
    return value


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}={value!r}: must be True or False")
