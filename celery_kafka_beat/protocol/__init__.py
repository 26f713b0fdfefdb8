"""The coordination protocol: a pure, deterministic core (no I/O, no clocks, no threads)."""

from celery_kafka_beat.protocol.node import (
    Action,
    Append,
    Bootstrap,
    CatchUp,
    DeliveryMode,
    Dispatch,
    NodeCore,
    NodeSettings,
    Note,
    Schedule,
    Truncate,
    plan_ticks,
)
from celery_kafka_beat.protocol.state import ClusterState, EntryState, Outcome, SessionState

__all__ = [
    "Action",
    "Append",
    "Bootstrap",
    "CatchUp",
    "ClusterState",
    "DeliveryMode",
    "Dispatch",
    "EntryState",
    "NodeCore",
    "NodeSettings",
    "Note",
    "Outcome",
    "Schedule",
    "SessionState",
    "Truncate",
    "plan_ticks",
]
