"""A tiny in-memory topic for the unit tests of the fold and of start-up."""

from __future__ import annotations

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import ClusterState
from celery_kafka_beat.protocol.state import FoldRules, catalog_digest

LEASE = 1000


class Log:
    """A tiny in-memory topic: append records with explicit broker timestamps and fold them."""

    def __init__(self, rules: FoldRules | None = None) -> None:
        self.state = ClusterState(rules=rules) if rules is not None else ClusterState()
        self.records: list[tuple[int, int, wire.Record | None]] = []
        self.seq = 0

    def add(self, ts: int, record: wire.Record | None) -> tuple[int, wire.Record | None]:
        offset = len(self.records)
        self.records.append((offset, ts, record))
        self.outcome = self.state.apply(offset, ts, record)
        return offset, record

    def q(self) -> int:
        self.seq += 1
        return self.seq

    def join(self, ts: int, session: str, entries: tuple[str, ...] = ("a", "b"), lease: int = LEASE) -> int:
        digest, data = catalog_digest(entries)
        self.add(ts, wire.CatalogPart(session=session, seq=self.q(), digest=digest, part=0, parts=1, data=data))
        offset, _ = self.add(
            ts, wire.Hello(session=session, seq=self.q(), node=session, lease_ms=lease, catalog=digest)
        )
        return offset

    def hb(self, ts: int, session: str) -> int:
        return self.add(ts, wire.Heartbeat(session=session, seq=self.q()))[0]

    def claim(self, ts: int, session: str, *entries: str) -> int:
        return self.add(ts, wire.Claim(session=session, seq=self.q(), entries=entries))[0]
