"""What the protocol core asks its shell to do: append a record, dispatch a tick, truncate the topic, log."""

from __future__ import annotations

from dataclasses import dataclass

from celery_kafka_beat import wire

__all__ = ["Action", "Append", "Dispatch", "Note", "Truncate"]


@dataclass(frozen=True, slots=True)
class Append:
    """Append this record to the sync topic (in the order the actions are given)."""

    record: wire.Record


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish the Celery task of this tick now. ``resend`` marks an at-least-once re-send of another node's
    decided tick (same task id)."""

    entry: str
    tick: int
    session: str
    epoch: int
    resend: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    """Every record before ``before`` is covered by a snapshot that was read back: the topic may drop them."""

    before: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something an operator may want in the log."""

    level: str
    message: str


Action = Append | Dispatch | Truncate | Note
