"""The cluster state: a deterministic fold of the sync topic, the one source of truth.

Every node folds the same records in the same (offset) order with the same broker timestamps, so every node
computes the same owner and the same last decided tick for every entry at every offset. Nothing here reads a clock,
a socket or an environment variable, and no record, whatever it holds, makes :meth:`ClusterState.apply` raise.

Rules (see ``docs/protocol.md`` for the reasoning):

* **Log time** is the largest broker timestamp seen so far (it never goes backwards). It dates things (an entry's
  first claim, how long an ended session is remembered) but **no lease depends on it**: a broker clock that steps
  forward or back changes no owner.
* A session ends with its ``bye``, or with an ``expire`` vote of another live session naming the session's latest
  record: the voter read that record and then waited the session's whole lease on its own monotonic clock without
  reading another. From then on its claims are void and nothing it writes counts (*expired means expired*).
* Any record of a live session renews it (it becomes the session's latest record).
* A session is a **candidate** for entries (see ``assignment.py``) once it wrote ``ready``: it has been live for its
  probation, so a replica that crash-loops or cannot read its own records never takes entries from a healthy owner.
  While no ready session is live, the oldest live session is ready (a cluster starting: nobody to protect, and no
  second round of moves when the others' probations end); never merely the latest hello, which a crash-looping
  replica writes over and over.
* A claim is granted per entry if its session is live, its catalog names the entry, and nobody owns the entry.
  The claim's offset is the claim's **epoch**: the fencing token that decisions and releases must quote.
* A decision is valid per tick if its session is live, owns the entry under the quoted epoch, and the tick is later
  than the entry's last decided tick (and than the floor set by a genesis). So no tick is ever decided twice.
* A **genesis** replaces the whole state (records were deleted that no snapshot covers and no replica was left to
  write one). It is valid if it names the first record of the current *quiet stretch* (the records since the last
  busy one: only waits and undecodable records) and that stretch has lasted ``FoldRules.genesis_quiet_ms``, longer
  than any session's lease, both on its writer's clock and in broker time. So every session of the old state has
  given up by then on its own clock, and a writer of stray records cannot restart a running cluster: running
  sessions write at least once per lease.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from celery_kafka_beat import wire
from celery_kafka_beat.protocol.assignment import MAX_WEIGHT

#: The longest lease a session may ask for; a ``hello`` asking for more is refused. It bounds how long a genesis
#: must wait for sessions it cannot see (their records were deleted) to have given up.
MAX_LEASE_MS: Final = 30_000

#: How long (log time) an ended session's id is remembered, so that a very late ``hello`` cannot start it again and a
#: late ``published`` of it still counts. Records reach the broker within the producer's ``message.timeout.ms``
#: (30 s in the runtime), so an hour is ample.
ENDED_RETENTION_MS: Final = 3_600_000
#: At most this many ended sessions are remembered (a writer of hellos cannot fill memory); the oldest go first.
MAX_ENDED: Final = 100_000
#: A catalog no live session names (its hello never landed), or a catalog still missing parts, is forgotten after
#: this much log time; a node whose hello names a forgotten catalog writes it again.
CATALOG_RETENTION_MS: Final = 600_000
#: Catalogs no live session names, and catalogs missing parts, are each kept for at most this many digests and
#: (incomplete ones) this many characters in all; beyond that the oldest go first.
MAX_LOOSE_CATALOGS: Final = 64
MAX_PARTIAL_CATALOG_CHARS: Final = 64 * 1024 * 1024
#: A genesis floor more than this far past the genesis's own timestamp is cut to it: a forged floor cannot stop an
#: entry for more than a day.
MAX_FLOOR_AHEAD_MS: Final = 86_400_000

#: Bound on the unconfirmed ticks kept per entry (a Celery broker down for a long time, or an entry ticking many
#: times a second): beyond it the oldest are forgotten, and not published again by a next owner.
MAX_UNCONFIRMED: Final = 1000

#: Version of the snapshot format written by :meth:`ClusterState.to_json`; other versions are not used.
SNAPSHOT_FORMAT: Final = 3


@dataclass(frozen=True, slots=True)
class FoldRules:
    """The fold's constants. Every node of a cluster must fold with the same rules; the defaults are the protocol's.
    The simulator scales them down to its short scenarios."""

    max_lease_ms: int = MAX_LEASE_MS
    ended_retention_ms: int = ENDED_RETENTION_MS
    catalog_retention_ms: int = CATALOG_RETENTION_MS

    @property
    def genesis_quiet_ms(self) -> int:
        """How long a genesis's writer must have seen nothing but waits: the longest lease plus a tenth for clock
        rate differences."""
        return self.max_lease_ms + self.max_lease_ms // 10


DEFAULT_RULES: Final = FoldRules()


@dataclass(slots=True)
class SessionState:
    session: str
    node: str
    lease_ms: int
    catalog: str
    last: int
    """Offset of the session's latest record: an ``expire`` vote must name it."""
    started: int
    """Offset of the session's hello; the oldest live ready session writes snapshots."""
    ready: bool = False
    version: int = wire.PROTOCOL_VERSION


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
    ended: tuple[str, ...] = ()
    """Sessions that an ``expire`` vote ended."""


INVALID: Final = Outcome(valid=False)
VALID: Final = Outcome(valid=True)


def catalog_digest(entries: Mapping[str, int] | Iterable[str]) -> tuple[str, str]:
    """Return ``(digest, data)`` for a catalog: the canonical JSON and its hash. Protocol 3 catalogs weigh their
    entries (``entries`` a mapping of name to weight, see ``assignment.tick_weight``): ``[[name, weight], ...]``
    sorted by name. Older catalogs list names only (``entries`` an iterable of names): ``[name, ...]``."""
    if isinstance(entries, Mapping):
        body: list[Any] = [[name, entries[name]] for name in sorted(entries)]
    else:
        body = sorted(set(entries))
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()[:32], data


@dataclass(slots=True)
class _PartialCatalog:
    parts: int
    pieces: dict[int, str]
    since: int
    chars: int = 0


def shown_life(session: SessionState) -> tuple[int, int]:
    """How far a session has shown it runs: the log between its hello and its latest record; then the oldest."""
    return session.last - session.started, -session.started


@dataclass(slots=True)
class ClusterState:
    offset: int = -1
    """The last offset folded into this state."""
    log_time: int = 0
    floor: int | None = None
    """No tick at or before this is decided (set by a genesis)."""
    quiet_from: int | None = None
    """Offset of the first record after the latest busy one (``wire.is_busy``): where a genesis's quiet stretch
    begins; None right after a busy record."""
    quiet_ts: int = 0
    """Broker timestamp of the record at ``quiet_from``."""
    sessions: dict[str, SessionState] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)
    entries: dict[str, EntryState] = field(default_factory=dict)
    catalogs: dict[str, frozenset[str]] = field(default_factory=dict)
    weights: dict[str, dict[str, int]] = field(default_factory=dict)
    """The weights of the complete catalogs that have them (protocol 3), by digest (see ``assignment.py``)."""
    loose: dict[str, int] = field(default_factory=dict)
    """Complete catalogs that no live session names, with the log time since when (forgotten after a while)."""
    partial_catalogs: dict[str, _PartialCatalog] = field(default_factory=dict)
    rules: FoldRules = DEFAULT_RULES
    # Derived indexes, rebuilt from the fields above; not part of a snapshot.
    owned: dict[str, set[str]] = field(default_factory=dict)
    membership: int = 0
    """Changes whenever the set of live sessions, their readiness or their catalogs changes (cache key for
    assignment)."""
    freed: int = 0
    """Changes whenever an entry loses its owner (a node then looks for entries to claim)."""
    granted: int = 0
    """Changes whenever an entry gains an owner (with ``freed``: a cache key for "what a session owns")."""
    foreign: set[str] = field(default_factory=set)
    """Names of the owned entries with an unconfirmed tick decided by another session than the owner's: the ticks
    the owner publishes again (at-least-once). Kept so that nobody scans every entry for them."""
    ready_live: int = 0
    """How many live sessions are ready."""
    _partial_chars: int = 0

    # -- folding -----------------------------------------------------------------------------------------------

    def apply(self, offset: int, timestamp: int, record: wire.Record | None) -> Outcome:
        """Fold one record (``None`` for one that could not be decoded) read at ``offset``."""
        if offset <= self.offset:
            raise ValueError(f"offset {offset} folded out of order (state is at {self.offset})")
        self.offset = offset
        self.log_time = max(self.log_time, timestamp)
        self._forget_old()
        if not wire.is_busy(record):
            if isinstance(record, wire.Genesis) and self._genesis(offset, timestamp, record):
                return VALID
            if self.quiet_from is None:
                self.quiet_from, self.quiet_ts = offset, timestamp
            return VALID if isinstance(record, wire.Wait) else INVALID  # a wait asks for a snapshot: nothing here
        self.quiet_from = None
        assert record is not None
        if isinstance(record, wire.Wait):
            return VALID  # a waiter's mark
        if isinstance(record, wire.Hello):
            return self._hello(offset, record)
        session = self.sessions.get(record.session)
        if session is None:
            if isinstance(record, wire.CatalogPart):
                self._catalog_part(record)  # a catalog is written before the hello that names it
                return VALID
            if isinstance(record, wire.Published) and record.session in self.ended:
                # A confirmation is a fact about the past: one held up in a producer while the broker was away
                # still spares the next owner a re-send (a duplicate). It renews nothing. (Not from a session never
                # seen: a stray writer must not stop re-sends.)
                self._confirm(record)
            return INVALID
        session.last = offset
        match record:
            case wire.Heartbeat():
                return VALID
            case wire.Ready():
                if not session.ready:
                    session.ready = True
                    self.ready_live += 1
                    self.membership += 1
                return VALID
            case wire.Expire():
                return self._expire(record)
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
                # Read by starting nodes; no effect on the state it describes. A part that claims to describe a
                # state later than its own offset is a lie and never counts.
                return VALID if record.as_of < offset else INVALID
        return INVALID  # pragma: no cover - every kind is matched above

    def is_live(self, session: str) -> bool:
        return session in self.sessions

    def is_ready(self, session: str) -> bool:
        state = self.sessions.get(session)
        return state is not None and state.ready

    def owner_of(self, name: str) -> tuple[str, int] | None:
        entry = self.entries.get(name)
        if entry is None or entry.owner is None:
            return None
        return entry.owner, entry.epoch

    def can_run(self, session: str, name: str) -> bool:
        state = self.sessions.get(session)
        return state is not None and name in self.catalogs.get(state.catalog, ())

    def old_versions_live(self) -> bool:
        """Whether a session of an older protocol version is live (it cannot read this version's records)."""
        return any(s.version < wire.PROTOCOL_VERSION for s in self.sessions.values())

    # -- rules -------------------------------------------------------------------------------------------------

    def _forget_old(self) -> None:
        now = self.log_time
        if self.ended and next(iter(self.ended.values())) + self.rules.ended_retention_ms < now:
            for sid in [sid for sid, t in self.ended.items() if t + self.rules.ended_retention_ms < now]:
                del self.ended[sid]
        keep = self.rules.catalog_retention_ms
        if self.loose and next(iter(self.loose.values())) + keep < now:
            for digest in [d for d, t in self.loose.items() if t + keep < now]:
                del self.loose[digest]
                self._drop_catalog(digest)
        if self.partial_catalogs and next(iter(self.partial_catalogs.values())).since + keep < now:
            for digest in [d for d, p in self.partial_catalogs.items() if p.since + keep < now]:
                self._drop_partial(digest)

    def _end(self, sid: str) -> None:
        gone = self.sessions.pop(sid)
        self.ready_live -= gone.ready
        self.ended[sid] = self.log_time
        if len(self.ended) > MAX_ENDED:
            del self.ended[next(iter(self.ended))]
        for name in self.owned.pop(sid, set()):
            entry = self.entries[name]
            entry.owner, entry.epoch = None, -1
            self.foreign.discard(name)
            self.freed += 1
        if not any(s.catalog == gone.catalog for s in self.sessions.values()):
            self._drop_catalog(gone.catalog)
            self.loose.pop(gone.catalog, None)
        self.membership += 1
        self._promote()

    def _hello(self, offset: int, record: wire.Hello) -> Outcome:
        if record.session in self.sessions or record.session in self.ended:
            return INVALID
        if record.lease_ms > self.rules.max_lease_ms:
            return INVALID  # a lease longer than a genesis waits for could outlive the state it is part of
        self.sessions[record.session] = SessionState(
            session=record.session,
            node=record.node,
            lease_ms=record.lease_ms,
            catalog=record.catalog,
            last=offset,
            started=offset,
            ready=False,
            version=record.version,
        )
        self.loose.pop(record.catalog, None)
        self.membership += 1
        self._promote()
        return VALID

    def _promote(self) -> None:
        """While no ready session is live, the live session of this protocol version that has shown the longest
        stretch of life (from its hello to its latest record, then the oldest) is ready: a cluster starting has
        nobody to protect, and one whose ready sessions all went away (a rolling restart faster than the probation)
        is best served by the session that has run longest. Never merely the latest hello: a replica that
        crash-loops says hello over and over and dies before it writes anything else, so neither its newest session
        nor its dead older ones (live until voted out) are chosen over one that keeps writing."""
        if self.ready_live:
            return
        best = max(
            (s for s in self.sessions.values() if s.version == wire.PROTOCOL_VERSION),
            key=shown_life,
            default=None,
        )
        if best is not None:
            best.ready = True
            self.ready_live += 1

    def _expire(self, record: wire.Expire) -> Outcome:
        ended = []
        for sid, last in record.items:
            target = self.sessions.get(sid)
            if target is not None and sid != record.session and target.last == last:
                self._end(sid)
                ended.append(sid)
        return Outcome(valid=True, ended=tuple(ended))

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
                entry.anchor = self._anchor(record)
            self.owned.setdefault(session.session, set()).add(name)
            granted.append(name)
        return Outcome(valid=True, granted=tuple(granted))

    def _anchor(self, record: wire.Claim) -> int:
        """When an entry that never ran was first claimed: its ticks count from here. The log time, unless the
        claimer holds a broker clock step (``w``): then its time line, which the log time is a step away from (a
        step forward would delay the first tick by the step, a step back run ticks that were never due). Within a
        day of the log time: a line further off is no honest hold's."""
        anchor = self.log_time
        if record.hold is not None and abs(record.hold[0] - self.log_time) <= MAX_FLOOR_AHEAD_MS:
            anchor = record.hold[0]
        return anchor if self.floor is None else max(anchor, self.floor)

    def _decide(self, offset: int, record: wire.Decide) -> Outcome:
        decided = []
        floor = self.floor
        for item in record.items:
            entry = self.entries.get(item.entry)
            if entry is None or entry.owner != record.session or entry.epoch != item.epoch:
                continue
            if entry.last_tick is not None and item.tick <= entry.last_tick:
                continue
            if floor is not None and item.tick <= floor:
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

    def _genesis(self, offset: int, timestamp: int, record: wire.Genesis) -> bool:
        # Only the record before ``start`` (busy) and those from ``start`` on decide validity, so that a node that
        # could not rebuild the state (it folds them on an empty state) and one that folded everything agree.
        quiet = self.rules.genesis_quiet_ms
        if record.start != self.quiet_from or record.elapsed_ms < quiet or timestamp - self.quiet_ts < quiet:
            return False
        self.floor = max(timestamp, min(record.floor, timestamp + MAX_FLOOR_AHEAD_MS))
        self.log_time = timestamp  # what a node that folds from ``start`` on knows too
        self.quiet_from = None
        self.sessions, self.ended, self.entries, self.ready_live = {}, {}, {}, 0
        self.catalogs, self.weights, self.loose, self.partial_catalogs, self._partial_chars = {}, {}, {}, {}, 0
        self.owned, self.foreign = {}, set()
        self.membership, self.freed, self.granted = self.membership + 1, self.freed + 1, self.granted + 1
        return True

    def _catalog_part(self, record: wire.CatalogPart) -> None:
        if record.digest in self.catalogs:
            return
        partial = self.partial_catalogs.get(record.digest)
        if partial is None:
            partial = self.partial_catalogs[record.digest] = _PartialCatalog(record.parts, {}, self.log_time)
        if partial.parts != record.parts or record.part in partial.pieces:
            return  # inconsistent part counts for one digest: keep the first
        partial.pieces[record.part] = record.data
        partial.chars += len(record.data)
        self._partial_chars += len(record.data)
        while len(self.partial_catalogs) > MAX_LOOSE_CATALOGS or self._partial_chars > MAX_PARTIAL_CATALOG_CHARS:
            self._drop_partial(next(iter(self.partial_catalogs)))
        if len(partial.pieces) < partial.parts or record.digest not in self.partial_catalogs:
            return
        self._drop_partial(record.digest)
        data = "".join(partial.pieces[i] for i in range(partial.parts))
        parsed = _parse_catalog(data)
        if parsed is None:
            return
        digest, canonical = catalog_digest(parsed)
        if digest != record.digest or canonical != data:
            return  # a catalog whose digest does not match its content is ignored, never trusted
        self._add_catalog(digest, parsed)
        if not any(s.catalog == digest for s in self.sessions.values()):
            self.loose[digest] = self.log_time
            while len(self.loose) > MAX_LOOSE_CATALOGS:
                oldest = next(iter(self.loose))
                del self.loose[oldest]
                self._drop_catalog(oldest)
        self.membership += 1

    def _add_catalog(self, digest: str, parsed: dict[str, int] | list[str]) -> None:
        self.catalogs[digest] = frozenset(parsed)
        if isinstance(parsed, dict):
            self.weights[digest] = parsed

    def _drop_catalog(self, digest: str) -> None:
        self.catalogs.pop(digest, None)
        self.weights.pop(digest, None)

    def _drop_partial(self, digest: str) -> None:
        partial = self.partial_catalogs.pop(digest, None)
        if partial is not None:
            self._partial_chars -= partial.chars

    # -- snapshots ---------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON of the whole state: equal states give equal strings."""
        body = {
            "v": SNAPSHOT_FORMAT,
            "offset": self.offset,
            "log_time": self.log_time,
            "floor": self.floor,
            "quiet": [self.quiet_from, self.quiet_ts],
            "sessions": sorted(
                [s.session, s.node, s.lease_ms, s.catalog, s.last, s.started, s.ready, s.version]
                for s in self.sessions.values()
            ),
            "ended": [[sid, t] for sid, t in self.ended.items()],  # in folding order: the oldest go first
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
            "catalogs": sorted([d, self._catalog_data(d)] for d in self.catalogs),
            "loose": [[d, t] for d, t in self.loose.items()],
            "partial": [
                [d, p.parts, p.since, sorted([i, s] for i, s in p.pieces.items())]
                for d, p in self.partial_catalogs.items()
            ],
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def _catalog_data(self, digest: str) -> str:
        weights = self.weights.get(digest)
        return catalog_digest(weights if weights is not None else self.catalogs[digest])[1]

    @classmethod
    def from_json(cls, data: str, rules: FoldRules = DEFAULT_RULES) -> ClusterState:
        """Rebuild a state from :meth:`to_json`; raise ``ValueError`` (only) on anything malformed."""
        try:
            return _from_json(cls, data, rules)
        except Exception as exc:  # whatever the snapshot holds: it is input
            raise ValueError(f"malformed snapshot: {type(exc).__name__}: {str(exc)[:200]}") from None


def _parse_catalog(data: str) -> dict[str, int] | list[str] | None:
    """A catalog's entries: names with weights (protocol 3), or names only (older); None if it is not one."""
    try:
        body = json.loads(data, parse_int=_bounded_int, parse_float=_no_float, parse_constant=_no_float)
    except Exception:  # deeply nested, malformed: the catalog is simply not usable
        return None
    if not isinstance(body, list):
        return None
    if all(isinstance(n, str) and n for n in body):
        return body
    weights: dict[str, int] = {}
    for item in body:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0]):
            return None
        name, weight = item
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
            return None
        weights[name] = weight
    return weights


def _no_float(text: str) -> object:
    raise ValueError("a catalog holds names and integer weights only")


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _req_int(value, what)


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _req_str(value, what)


def _req_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -wire.MAX_INT <= value <= wire.MAX_INT:
        raise ValueError(f"{what} must be an integer, got {value!r:.40}")
    return value


def _req_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r:.40}")
    return value


def _rows(value: Any, what: str, width: int) -> list[list[Any]]:
    if not isinstance(value, list) or not all(isinstance(r, list) and len(r) == width for r in value):
        raise ValueError(f"{what} must be a list of {width}-item rows")
    return value


def _from_json(cls: type[ClusterState], data: str, rules: FoldRules) -> ClusterState:
    body = json.loads(data, parse_int=_bounded_int, parse_constant=_no_constant)
    if not isinstance(body, dict) or body.get("v") != SNAPSHOT_FORMAT:
        raise ValueError(f"not a format {SNAPSHOT_FORMAT} snapshot")
    state = cls(
        offset=_req_int(body["offset"], "offset"),
        log_time=_req_int(body["log_time"], "log_time"),
        floor=_opt_int(body["floor"], "floor"),
        rules=rules,
    )
    quiet = _rows([body["quiet"]], "quiet", 2)[0]
    state.quiet_from, state.quiet_ts = _opt_int(quiet[0], "quiet from"), _req_int(quiet[1], "quiet ts")
    for sid, node, lease, cat, last, started, ready, version in _rows(body["sessions"], "sessions", 8):
        if not isinstance(ready, bool):
            raise ValueError("a session's ready flag must be a bool")
        state.sessions[_req_str(sid, "session")] = SessionState(
            _req_str(sid, "session"),
            _req_str(node, "node"),
            _req_int(lease, "lease"),
            _req_str(cat, "catalog"),
            _req_int(last, "last"),
            _req_int(started, "started"),
            ready,
            _req_int(version, "version"),
        )
        state.ready_live += ready
    for sid, t in _rows(body["ended"], "ended", 2):
        state.ended[_req_str(sid, "ended session")] = _req_int(t, "ended time")
    for row in _rows(body["entries"], "entries", 10):
        name, owner, epoch, anchor, last, last_s, last_e, last_o, published, unconfirmed = row
        name = _req_str(name, "entry")
        if not isinstance(published, bool) or not isinstance(unconfirmed, list):
            raise ValueError(f"entry {name!r:.40}: malformed")
        entry = EntryState(
            owner=_opt_str(owner, "owner"),
            epoch=_req_int(epoch, "epoch"),
            anchor=_opt_int(anchor, "anchor"),
            last_tick=_opt_int(last, "last tick"),
            last_session=_opt_str(last_s, "last session"),
            last_epoch=_req_int(last_e, "last epoch"),
            last_offset=_req_int(last_o, "last offset"),
            published=published,
            unconfirmed=tuple(
                (_req_int(t, "unconfirmed tick"), _req_str(sid, "unconfirmed session"))
                for t, sid in _rows(unconfirmed, "unconfirmed", 2)
            ),
        )
        state.entries[name] = entry
        if entry.owner is not None:
            if entry.owner not in state.sessions:
                raise ValueError(f"entry {name!r:.40} is owned by a session that is not live")
            state.owned.setdefault(entry.owner, set()).add(name)
        state._index_foreign(name, entry)
    for digest, catalog in _rows(body["catalogs"], "catalogs", 2):
        parsed = _parse_catalog(_req_str(catalog, "catalog"))
        if parsed is None or catalog_digest(parsed) != (digest, catalog):
            raise ValueError(f"catalog {digest!r:.40} does not parse or does not match its digest")
        state._add_catalog(digest, parsed)
    for digest, t in _rows(body["loose"], "loose", 2):
        state.loose[_req_str(digest, "catalog digest")] = _req_int(t, "catalog time")
    for digest, parts, since, pieces in _rows(body["partial"], "partial", 4):
        partial = _PartialCatalog(_req_int(parts, "parts"), {}, _req_int(since, "since"))
        for i, piece in _rows(pieces, "pieces", 2):
            partial.pieces[_req_int(i, "part")] = _req_str(piece, "piece")
        partial.chars = sum(len(p) for p in partial.pieces.values())
        state.partial_catalogs[_req_str(digest, "catalog digest")] = partial
        state._partial_chars += partial.chars
    return state


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")
