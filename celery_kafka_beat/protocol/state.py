"""The cluster state: a deterministic fold of the sync topic, the one source of truth.

Every node folds the same records in the same (offset) order with the same broker timestamps, so every node
computes the same owner and the same last decided tick for every entry at every offset. Nothing here reads a clock,
a socket or an environment variable.

Rules (see ``docs/protocol.md`` for the reasoning):

* **Log time** is the largest broker timestamp seen so far; it never goes backwards, whatever the broker clock does.
  Every record advances it, even one this version cannot parse.
* Before a record is applied, every session whose lease ran out in log time is ended: its claims are void from this
  offset on, and nothing it writes later counts (*expired means expired*).
* Any record of a live session renews its lease to the current log time.
* A claim is granted per entry if its session is live, its catalog names the entry, and nobody owns the entry.
  The claim's offset is the claim's **epoch**: the fencing token that decisions and releases must quote.
* A decision is valid per tick if its session is live, owns the entry under the quoted epoch, and the tick is later
  than the entry's last decided tick. So no tick is ever decided twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Final

from celery_kafka_beat import wire

#: How long (log time) an ended session's id is remembered, so that a very late ``hello`` cannot start it again.
#: Records reach the broker within the producer's ``message.timeout.ms`` (30 s in the runtime), so an hour is ample.
ENDED_RETENTION_MS: Final = 3_600_000


@dataclass(slots=True)
class SessionState:
    session: str
    node: str
    lease_ms: int
    catalog: str
    renewed: int
    """Log time of the session's latest record; the lease runs until ``renewed + lease_ms`` (inclusive)."""
    started: int
    """Offset of the session's hello; the oldest live session writes snapshots."""


@dataclass(slots=True)
class EntryState:
    owner: str | None = None
    epoch: int = -1
    anchor: int | None = None
    """Log time of the entry's first granted claim: where an entry that never ran starts counting."""
    last_tick: int | None = None
    last_session: str | None = None
    last_epoch: int = -1
    last_offset: int = -1
    published: bool = False
    unconfirmed: tuple[tuple[int, str], ...] = ()  # a tuple: the empty one is shared (100,000 entries cost nothing)
    """(tick, deciding session) of ticks decided in at-least-once mode and not yet confirmed, oldest first (at most
    ``MAX_UNCONFIRMED``): the entry's next owner publishes them again."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one record did; a node reads its own records' outcomes back."""

    valid: bool
    granted: tuple[str, ...] = ()
    decided: tuple[wire.DecideItem, ...] = ()


#: Bound on the unconfirmed ticks kept per entry (a Celery broker down for a long time, or an entry ticking many
#: times a second): beyond it the oldest are forgotten, and not published again by a next owner.
MAX_UNCONFIRMED: Final = 1000

INVALID: Final = Outcome(valid=False)
VALID: Final = Outcome(valid=True)


def catalog_digest(names: list[str] | tuple[str, ...] | frozenset[str]) -> tuple[str, str]:
    """Return ``(digest, data)`` for a catalog: the canonical JSON of the sorted names and its hash."""
    data = json.dumps(sorted(set(names)), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()[:32], data


@dataclass(slots=True)
class ClusterState:
    offset: int = -1
    """The last offset folded into this state."""
    log_time: int = 0
    sessions: dict[str, SessionState] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)
    entries: dict[str, EntryState] = field(default_factory=dict)
    catalogs: dict[str, frozenset[str]] = field(default_factory=dict)
    partial_catalogs: dict[str, tuple[int, dict[int, str]]] = field(default_factory=dict)
    # Derived indexes, rebuilt from the fields above; not part of a snapshot.
    owned: dict[str, set[str]] = field(default_factory=dict)
    membership: int = 0
    """Changes whenever the set of live sessions or their catalogs changes (cache key for assignment)."""
    freed: int = 0
    """Changes whenever an entry loses its owner (a node then looks for entries to claim)."""
    granted: int = 0
    """Changes whenever an entry gains an owner (with ``freed``: a cache key for "what a session owns")."""
    foreign: set[str] = field(default_factory=set)
    """Names of the owned entries with an unconfirmed tick decided by another session than the owner's: the ticks
    the owner publishes again (at-least-once). Kept so that nobody scans every entry for them."""

    # -- folding -----------------------------------------------------------------------------------------------

    def apply(self, offset: int, timestamp: int, record: wire.Record | None) -> Outcome:
        """Fold one record (``None`` for one that could not be decoded) read at ``offset``."""
        if offset <= self.offset:
            raise ValueError(f"offset {offset} folded out of order (state is at {self.offset})")
        self.offset = offset
        self.log_time = max(self.log_time, timestamp)
        self._expire()
        if record is None:
            return INVALID
        if isinstance(record, wire.Hello):
            return self._hello(offset, record)
        session = self.sessions.get(record.session)
        if session is None:
            if isinstance(record, wire.CatalogPart):
                self._catalog_part(record)  # a catalog is written before the hello that names it
                return VALID
            if isinstance(record, wire.Published):
                # A confirmation is a fact about the past, true whoever sends it: one held up in a producer while
                # the broker was away still spares the next owner a re-send (a duplicate). It renews nothing.
                self._confirm(record)
            return INVALID
        session.renewed = self.log_time
        match record:
            case wire.Heartbeat():
                return VALID
            case wire.Claim():
                return self._claim(offset, session, record)
            case wire.Decide():
                return self._decide(offset, record)
            case wire.Release():
                for name, epoch in record.items:
                    entry = self.entries.get(name)
                    if entry is not None and entry.owner == record.session and entry.epoch == epoch:
                        self._disown(name, entry)
                return VALID
            case wire.Published():
                self._confirm(record)
                return VALID
            case wire.Goodbye():
                self._end(record.session)
                return VALID
            case wire.CatalogPart():
                self._catalog_part(record)
                return VALID
            case wire.SnapshotPart():
                return VALID  # read by starting nodes; no effect on the state it describes
        return INVALID  # pragma: no cover - every kind is matched above

    def is_live(self, session: str) -> bool:
        return session in self.sessions

    def lease_end(self, session: str) -> int | None:
        """Log time after which ``session`` is expired (None if it is not live)."""
        state = self.sessions.get(session)
        return None if state is None else state.renewed + state.lease_ms

    def owner_of(self, name: str) -> tuple[str, int] | None:
        entry = self.entries.get(name)
        if entry is None or entry.owner is None:
            return None
        return entry.owner, entry.epoch

    def can_run(self, session: str, name: str) -> bool:
        state = self.sessions.get(session)
        return state is not None and name in self.catalogs.get(state.catalog, ())

    # -- rules -------------------------------------------------------------------------------------------------

    def _expire(self) -> None:
        now = self.log_time
        for sid in [s.session for s in self.sessions.values() if s.renewed + s.lease_ms < now]:
            self._end(sid)
        if self.ended and next(iter(self.ended.values())) + ENDED_RETENTION_MS < now:
            for sid in [sid for sid, t in self.ended.items() if t + ENDED_RETENTION_MS < now]:
                del self.ended[sid]

    def _end(self, sid: str) -> None:
        gone = self.sessions.pop(sid)
        self.ended[sid] = self.log_time
        for name in self.owned.pop(sid, set()):
            entry = self.entries[name]
            entry.owner, entry.epoch = None, -1
            self.foreign.discard(name)
            self.freed += 1
        if not any(s.catalog == gone.catalog for s in self.sessions.values()):
            self.catalogs.pop(gone.catalog, None)
        self.membership += 1

    def _hello(self, offset: int, record: wire.Hello) -> Outcome:
        if record.session in self.sessions or record.session in self.ended:
            return INVALID
        self.sessions[record.session] = SessionState(
            session=record.session,
            node=record.node,
            lease_ms=record.lease_ms,
            catalog=record.catalog,
            renewed=self.log_time,
            started=offset,
        )
        self.membership += 1
        return VALID

    def _claim(self, offset: int, session: SessionState, record: wire.Claim) -> Outcome:
        names = self.catalogs.get(session.catalog, frozenset())
        granted = []
        for name in record.entries:
            if name not in names:
                continue
            entry = self.entries.get(name)
            if entry is None:
                entry = self.entries[name] = EntryState()
            if entry.owner is not None:
                continue
            entry.owner, entry.epoch = session.session, offset
            self.granted += 1
            self._index_foreign(name, entry)
            if entry.anchor is None and entry.last_tick is None:
                entry.anchor = self.log_time
            self.owned.setdefault(session.session, set()).add(name)
            granted.append(name)
        return Outcome(valid=True, granted=tuple(granted))

    def _decide(self, offset: int, record: wire.Decide) -> Outcome:
        decided = []
        for item in record.items:
            entry = self.entries.get(item.entry)
            if entry is None or entry.owner != record.session or entry.epoch != item.epoch:
                continue
            if entry.last_tick is not None and item.tick <= entry.last_tick:
                continue
            entry.last_tick, entry.last_session, entry.last_epoch = item.tick, record.session, item.epoch
            entry.last_offset, entry.published = offset, False
            if record.ack:
                entry.unconfirmed = (*entry.unconfirmed, (item.tick, record.session))[-MAX_UNCONFIRMED:]
                self._index_foreign(item.entry, entry)  # the oldest may have been dropped
            decided.append(item)
        return Outcome(valid=True, decided=tuple(decided))

    def _confirm(self, record: wire.Published) -> None:
        for name, tick in record.items:
            entry = self.entries.get(name)
            if entry is None:
                continue
            if entry.last_tick == tick:
                entry.published = True
            if entry.unconfirmed:
                entry.unconfirmed = tuple(u for u in entry.unconfirmed if u[0] != tick)
                self._index_foreign(name, entry)

    def _disown(self, name: str, entry: EntryState) -> None:
        assert entry.owner is not None
        self.owned[entry.owner].discard(name)
        entry.owner, entry.epoch = None, -1
        self.foreign.discard(name)
        self.freed += 1

    def _index_foreign(self, name: str, entry: EntryState) -> None:
        if entry.owner is not None and any(decider != entry.owner for _, decider in entry.unconfirmed):
            self.foreign.add(name)
        else:
            self.foreign.discard(name)

    def _catalog_part(self, record: wire.CatalogPart) -> None:
        if record.digest in self.catalogs:
            return
        parts, pieces = self.partial_catalogs.get(record.digest, (record.parts, {}))
        if parts != record.parts:
            return  # inconsistent part counts for one digest: keep the first
        pieces[record.part] = record.data
        self.partial_catalogs[record.digest] = (parts, pieces)
        if len(pieces) < parts:
            return
        del self.partial_catalogs[record.digest]
        data = "".join(pieces[i] for i in range(parts))
        try:
            names = json.loads(data)
        except json.JSONDecodeError:
            return
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return
        digest, canonical = catalog_digest(names)
        if digest != record.digest or canonical != data:
            return  # a catalog whose digest does not match its content is ignored, never trusted
        self.catalogs[digest] = frozenset(names)
        self.membership += 1

    # -- snapshots ---------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON of the whole state: equal states give equal strings."""
        body = {
            "offset": self.offset,
            "log_time": self.log_time,
            "sessions": sorted(
                [s.session, s.node, s.lease_ms, s.catalog, s.renewed, s.started] for s in self.sessions.values()
            ),
            "ended": sorted([sid, t] for sid, t in self.ended.items()),
            "entries": sorted(
                [
                    name,
                    e.owner,
                    e.epoch,
                    e.anchor,
                    e.last_tick,
                    e.last_session,
                    e.last_epoch,
                    e.last_offset,
                    e.published,
                    [list(u) for u in e.unconfirmed],
                ]
                for name, e in self.entries.items()
                if e.owner is not None or e.anchor is not None or e.last_tick is not None or e.unconfirmed
            ),
            "catalogs": sorted([d, sorted(names)] for d, names in self.catalogs.items()),
            "partial": sorted(
                [d, n, sorted([i, s] for i, s in pieces.items())] for d, (n, pieces) in self.partial_catalogs.items()
            ),
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> ClusterState:
        """Rebuild a state from :meth:`to_json`; raise ``ValueError`` on anything malformed."""
        try:
            body = json.loads(data)
            state = cls(offset=int(body["offset"]), log_time=int(body["log_time"]))
            for sid, node, lease, cat, renewed, started in body["sessions"]:
                state.sessions[str(sid)] = SessionState(
                    str(sid), str(node), int(lease), str(cat), int(renewed), int(started)
                )
            # Oldest first, as a live fold inserts them: _expire relies on it.
            state.ended = {str(sid): int(t) for sid, t in sorted(body["ended"], key=lambda p: (p[1], p[0]))}
            for row in body["entries"]:
                # Snapshots written before unconfirmed ticks were tracked have nine fields.
                name, owner, epoch, anchor, last, last_s, last_e, last_o, published = row[:9]
                unconfirmed = tuple((int(t), str(sid)) for t, sid in (row[9] if len(row) > 9 else []))
                state.entries[str(name)] = EntryState(
                    owner=None if owner is None else str(owner),
                    epoch=int(epoch),
                    anchor=None if anchor is None else int(anchor),
                    last_tick=None if last is None else int(last),
                    last_session=None if last_s is None else str(last_s),
                    last_epoch=int(last_e),
                    last_offset=int(last_o),
                    published=bool(published),
                    unconfirmed=unconfirmed,
                )
                if owner is not None:
                    state.owned.setdefault(str(owner), set()).add(str(name))
                state._index_foreign(str(name), state.entries[str(name)])
            state.catalogs = {str(d): frozenset(str(n) for n in names) for d, names in body["catalogs"]}
            state.partial_catalogs = {
                str(d): (int(n), {int(i): str(s) for i, s in pieces}) for d, n, pieces in body["partial"]
            }
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed snapshot: {exc!r}") from None
        return state
