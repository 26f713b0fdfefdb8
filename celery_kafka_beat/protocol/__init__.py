"""The coordination protocol: a pure, deterministic core (no I/O, no clocks, no threads)."""

from celery_kafka_beat.protocol.actions import Action, Append, Dispatch, Note, Truncate
from celery_kafka_beat.protocol.bootstrap import Bootstrap, Waiter
from celery_kafka_beat.protocol.clock import BrokerClock, ClockStep
from celery_kafka_beat.protocol.node import NodeCore, NodeSettings
from celery_kafka_beat.protocol.planning import CatchUp, DeliveryMode, Schedule, plan_ticks
from celery_kafka_beat.protocol.state import (
    DEFAULT_RULES,
    MAX_LEASE_MS,
    ClusterState,
    EntryState,
    FoldRules,
    Outcome,
    SessionState,
)

__all__ = [
    "DEFAULT_RULES",
    "MAX_LEASE_MS",
    "Action",
    "Append",
    "Bootstrap",
    "BrokerClock",
    "CatchUp",
    "ClockStep",
    "ClusterState",
    "DeliveryMode",
    "Dispatch",
    "EntryState",
    "FoldRules",
    "NodeCore",
    "NodeSettings",
    "Note",
    "Outcome",
    "Schedule",
    "SessionState",
    "Truncate",
    "Waiter",
    "plan_ticks",
]
