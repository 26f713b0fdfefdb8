"""The wire format of the sync topic: versioned JSON records, validated field by field.

Every value is a UTF-8 JSON object ``{"ckb": <protocol version>, "k": <kind>, "s": <session>, "q": <seq>, ...}``.
Nothing read from Kafka is ever unpickled or evaluated. :func:`decode` is total: whatever the bytes (not JSON,
integers of thousands of digits, ``Infinity``, nesting a thousand levels deep, megabytes of padding), it returns a
record whose every field has the type and range its kind needs, or raises :class:`WireError` saying what is wrong
(``code`` names the kind of problem, for logging each kind once). No other exception escapes it. The runtime logs
such records once per kind of problem and skips them; they still advance log time, because their broker timestamp
is trustworthy even when their body is not (see ``docs/protocol.md``).

``(session, seq)`` identifies a record uniquely; a node finds its own records by it when it reads them back, rather
than trusting the offset in the delivery report (which can be -1001 for a retried idempotent message).

Every kind may carry ``w`` = ``[time line, held ms]`` while its writer is holding a broker clock step: its
estimate of the brokers' clock when it sent the record, which did not follow the step, and for how long it has held
it (see ``protocol/clock.py``). A node that starts while the brokers' clock is stepped joins that hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

#: Version written into every record. A node skips records with a higher version (and says so once). Records of
#: older versions (1: 0.1.0.dev; 2: the first fault-tolerant protocol, whose replicas assign entries by plain
#: rendezvous hashing and read no weights) are still read: their sessions are folded, but a node of this version
#: claims nothing while one is live (older nodes cannot read this version's records, and assign differently; see
#: ``docs/protocol.md``, mixed versions).
PROTOCOL_VERSION: Final = 3
OLDEST_VERSION: Final = 1

#: Upper bounds that keep a malformed or hostile record from costing memory or time; generous for real use.
MAX_NAME_LEN: Final = 1024
MAX_ITEMS: Final = 100_000
MAX_DATA_LEN: Final = 4 * 1024 * 1024
#: A value larger than this is refused before it is parsed (the topic's own limit is 4 MiB when this project
#: creates it; a topic made by hand may allow more).
MAX_VALUE_BYTES: Final = 8 * 1024 * 1024
#: Integers are offsets, sequence numbers, milliseconds: all fit in 64 bits. Longer digit strings are refused
#: before Python converts them (which is quadratic in the digits and raises ValueError past 4,300 of them).
MAX_INT: Final = 2**63 - 1
_MAX_INT_DIGITS: Final = 19


class WireError(ValueError):
    """A record value that this version cannot use; the message says why, ``code`` says what kind of problem."""

    code: str = "invalid"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ForeignRecord(WireError):
    """A value not written by celery-kafka-beat at all (not JSON, or without the ``ckb`` marker)."""

    code = "foreign"


class FutureRecord(WireError):
    """A record of a newer protocol version than this node speaks."""

    code = "future-version"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Starts a session. ``catalog`` is the digest of the entries the node can run (see :class:`CatalogPart`)."""

    session: str
    seq: int
    node: str
    lease_ms: int
    catalog: str
    version: int = PROTOCOL_VERSION
    """The protocol version of the writer (the record's ``ckb``)."""
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """The session has been live for its probation: from now on it is a candidate for entries."""

    session: str
    seq: int
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Renews the session; any record of a live session renews it too."""

    session: str
    seq: int
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Expire:
    """Votes that sessions have gone silent: items are ``(session, offset)``. Each ends its session if that session
    is live and ``offset`` is still its latest record: the writer read that record and then waited a whole lease of
    the session on its own clock without reading another."""

    session: str
    seq: int
    items: tuple[tuple[str, int], ...]
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """Asks for entries. Valid per entry if the session is live, can run it and nobody owns it."""

    session: str
    seq: int
    entries: tuple[str, ...]
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Gives entries back; items are ``(entry, epoch)`` so a release can only end the claim it names."""

    session: str
    seq: int
    items: tuple[tuple[str, int], ...]
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DecideItem:
    entry: str
    epoch: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Decide:
    """Decides ticks (nominal UTC milliseconds). Valid per item if the session owns the entry under ``epoch``
    and the tick is later than the entry's last decided tick."""

    session: str
    seq: int
    items: tuple[DecideItem, ...]
    ack: bool = False
    """The decider confirms each publish with a ``published`` record (at-least-once mode): until it does, a tick
    counts as unconfirmed and the entry's next owner publishes it again."""
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """Says that ticks were published to the Celery broker; items are ``(entry, tick)``."""

    session: str
    seq: int
    items: tuple[tuple[str, int], ...]
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye:
    """Ends the session at once: its claims are void from this offset on."""

    session: str
    seq: int
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogPart:
    """One part of a catalog: the JSON list of entry names a node can run, split into ``parts`` strings."""

    session: str
    seq: int
    digest: str
    part: int
    parts: int
    data: str
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPart:
    """One part of a snapshot of the cluster state as of offset ``as_of`` (inclusive)."""

    session: str
    seq: int
    snap_id: str
    as_of: int
    part: int
    parts: int
    data: str
    hold: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    """A starting node cannot rebuild the state (records were deleted that no snapshot covers): it asks for a
    snapshot. ``session`` is the waiter's id (it has no session yet); ``low`` the log start it found. A waiter's
    first wait is a ``mark``: it counts as activity, so that every waiter knows where the quiet stretch that a
    genesis needs begins."""

    session: str
    seq: int
    low: int
    mark: bool = False
    hold: tuple[int, int] | None = None


def is_busy(record: Record | None) -> bool:
    """Whether a record is activity that a genesis's quiet stretch must not contain: every decodable record but
    waits (other than a waiter's mark) and geneses."""
    if record is None or isinstance(record, Genesis):
        return False
    return not isinstance(record, Wait) or record.mark


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    """Starts the state afresh: written by a waiter after nothing but waits (and undecodable records) were written
    for ``elapsed_ms`` (its own clock) since it read the record at offset ``start``, the first of that quiet
    stretch. No tick at or before ``floor`` is decided after it."""

    session: str
    seq: int
    start: int
    elapsed_ms: int
    floor: int
    hold: tuple[int, int] | None = None


Record = (
    Hello
    | Ready
    | Heartbeat
    | Expire
    | Claim
    | Release
    | Decide
    | Published
    | Goodbye
    | CatalogPart
    | SnapshotPart
    | Wait
    | Genesis
)

_KIND_OF: Final[dict[type, str]] = {
    Hello: "hello",
    Ready: "ready",
    Heartbeat: "hb",
    Expire: "expire",
    Claim: "claim",
    Release: "release",
    Decide: "decide",
    Published: "published",
    Goodbye: "bye",
    CatalogPart: "catalog",
    SnapshotPart: "snap",
    Wait: "wait",
    Genesis: "genesis",
}
KINDS: Final = tuple(_KIND_OF.values())


def kind_of(record: Record) -> str:
    """The record's kind as written in ``k``."""
    return _KIND_OF[type(record)]


def encode(record: Record) -> tuple[bytes, bytes]:
    """Return ``(key, value)``. The key only aids people reading the topic; the protocol ignores it."""
    version = record.version if isinstance(record, Hello) else PROTOCOL_VERSION
    body: dict[str, object] = {"ckb": version, "k": _KIND_OF[type(record)]}
    body["s"] = record.session
    body["q"] = record.seq
    match record:
        case Hello():
            body.update(node=record.node, lease=record.lease_ms, cat=record.catalog)
        case Claim():
            body["e"] = list(record.entries)
        case Release() | Published() | Expire():
            body["i"] = [list(item) for item in record.items]
        case Decide():
            body["i"] = [[i.entry, i.epoch, i.tick] for i in record.items]
            if record.ack:
                body["a"] = 1
        case CatalogPart():
            body.update(d=record.digest, p=record.part, n=record.parts, data=record.data)
        case SnapshotPart():
            body.update(id=record.snap_id, as_of=record.as_of, p=record.part, n=record.parts, data=record.data)
        case Wait():
            body["low"] = record.low
            if record.mark:
                body["mark"] = 1
        case Genesis():
            body.update({"from": record.start, "el": record.elapsed_ms, "floor": record.floor})
        case Heartbeat() | Goodbye() | Ready():
            pass
    if record.hold is not None:
        body["w"] = list(record.hold)
    key = f"{body['k']}/{record.session}".encode()
    return key, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(value: bytes | None) -> Record:
    """Parse and validate one record value; raise :class:`WireError` (only) saying what is wrong."""
    if value is None:
        raise ForeignRecord("empty value (a tombstone?)", "empty")
    if len(value) > MAX_VALUE_BYTES:
        raise ForeignRecord(f"value of {len(value)} bytes is larger than {MAX_VALUE_BYTES}", "too-large")
    try:
        body = json.loads(value, parse_int=_parse_int, parse_constant=_no_constant)
    except Exception as exc:  # every way JSON can fail: bad UTF-8, syntax, too deep, too long an integer, NaN
        raise ForeignRecord(f"not JSON: {type(exc).__name__}: {str(exc)[:100]}", "not-json") from None
    if not isinstance(body, dict) or "ckb" not in body:
        raise ForeignRecord("no 'ckb' protocol marker: not a celery-kafka-beat record", "no-marker")
    version = body["ckb"]
    if not _is_int(version) or version < OLDEST_VERSION:
        raise WireError(f"bad protocol version {version!r:.40}", "bad-version")
    if version > PROTOCOL_VERSION:
        raise FutureRecord(f"protocol version {version} is newer than this node's {PROTOCOL_VERSION}")
    kind = body.get("k")
    if not isinstance(kind, str) or kind not in KINDS or (version == 1 and kind not in _V1_KINDS):
        raise WireError(f"unknown record kind {kind!r:.40}", "unknown-kind")
    try:
        return _decode(kind, version, body)
    except WireError as exc:
        exc.code = f"{kind}:{exc.code}"
        raise


_V1_KINDS: Final = frozenset({"hello", "hb", "claim", "release", "decide", "published", "bye", "catalog", "snap"})


def _decode(kind: str, version: int, body: dict[str, object]) -> Record:
    session = _name(body, "s")
    seq = _int(body, "q")
    hold = _hold(body)
    match kind:
        case "hello":
            return Hello(
                session=session,
                seq=seq,
                node=_name(body, "node"),
                lease_ms=_int(body, "lease", lo=1),
                catalog=_name(body, "cat"),
                version=version,
                hold=hold,
            )
        case "ready":
            return Ready(session=session, seq=seq, hold=hold)
        case "hb":
            return Heartbeat(session=session, seq=seq, hold=hold)
        case "expire":
            return Expire(session=session, seq=seq, items=tuple(_pair(item) for item in _list(body, "i")), hold=hold)
        case "claim":
            entries = _list(body, "e")
            return Claim(session=session, seq=seq, entries=tuple(_check_name(e, "e[]") for e in entries), hold=hold)
        case "release" | "published":
            items = tuple(_pair(item) for item in _list(body, "i"))
            if kind == "release":
                return Release(session=session, seq=seq, items=items, hold=hold)
            return Published(session=session, seq=seq, items=items, hold=hold)
        case "decide":
            ack = body.get("a", 0)
            if ack not in (0, 1) or isinstance(ack, bool):
                raise WireError(f"field 'a' must be 0 or 1, got {ack!r:.40}", "a")
            decided = tuple(_decide_item(i) for i in _list(body, "i"))
            return Decide(session=session, seq=seq, items=decided, ack=ack == 1, hold=hold)
        case "bye":
            return Goodbye(session=session, seq=seq, hold=hold)
        case "catalog":
            part, parts = _parts(body)
            return CatalogPart(
                session=session,
                seq=seq,
                digest=_name(body, "d"),
                part=part,
                parts=parts,
                data=_data(body),
                hold=hold,
            )
        case "snap":
            part, parts = _parts(body)
            return SnapshotPart(
                session=session,
                seq=seq,
                snap_id=_name(body, "id"),
                as_of=_int(body, "as_of", lo=-1),
                part=part,
                parts=parts,
                data=_data(body),
                hold=hold,
            )
        case "wait":
            mark = body.get("mark", 0)
            if mark not in (0, 1) or isinstance(mark, bool):
                raise WireError(f"field 'mark' must be 0 or 1, got {mark!r:.40}", "mark")
            return Wait(session=session, seq=seq, low=_int(body, "low"), mark=mark == 1, hold=hold)
        case _:  # "genesis": decode() admits only known kinds
            return Genesis(
                session=session,
                seq=seq,
                start=_int(body, "from"),
                elapsed_ms=_int(body, "el"),
                floor=_int(body, "floor", lo=-MAX_INT),
                hold=hold,
            )


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(digits)} digits")
    return int(text)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: dict[str, object], field: str, *, lo: int = 0) -> int:
    value = body.get(field)
    if not _is_int(value):
        raise WireError(f"field {field!r} must be an integer, got {value!r:.80}", field)
    assert isinstance(value, int)
    if not lo <= value <= MAX_INT:
        raise WireError(f"field {field!r} must be between {lo} and {MAX_INT}, got {value}", field)
    return value


def _hold(body: dict[str, object]) -> tuple[int, int] | None:
    value = body.get("w")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not (_item_int(value[0]) and _item_int(value[1])):
        raise WireError(f"field 'w' must be [time line ms, held ms], got {value!r:.80}", "w")
    line, held = int(value[0]), int(value[1])
    if held < 0:
        raise WireError(f"field 'w': held ms must not be negative, got {held}", "w")
    return line, held


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
        raise WireError(f"field {field!r} must be a non-empty string of at most {MAX_NAME_LEN} characters", field)
    return value


def _name(body: dict[str, object], field: str) -> str:
    return _check_name(body.get(field), field)


def _list(body: dict[str, object], field: str) -> list[object]:
    value = body.get(field)
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise WireError(f"field {field!r} must be a list of at most {MAX_ITEMS} items", field)
    return value


def _item_int(value: object) -> bool:
    return _is_int(value) and -MAX_INT <= value <= MAX_INT  # type: ignore[operator]


def _pair(item: object) -> tuple[str, int]:
    if not isinstance(item, list) or len(item) != 2 or not _item_int(item[1]):
        raise WireError(f"item {item!r:.80} must be [name, integer]", "i")
    return _check_name(item[0], "i[][0]"), int(item[1])


def _decide_item(item: object) -> DecideItem:
    if not isinstance(item, list) or len(item) != 3 or not (_item_int(item[1]) and _item_int(item[2])):
        raise WireError(f"item {item!r:.80} must be [entry, epoch, tick]", "i")
    return DecideItem(entry=_check_name(item[0], "i[][0]"), epoch=int(item[1]), tick=int(item[2]))


def _parts(body: dict[str, object]) -> tuple[int, int]:
    part, parts = _int(body, "p"), _int(body, "n", lo=1)
    if parts > MAX_ITEMS:
        raise WireError(f"a record of {parts} parts is more than {MAX_ITEMS}", "n")
    if part >= parts:
        raise WireError(f"part {part} out of range for {parts} parts", "p")
    return part, parts


def _data(body: dict[str, object]) -> str:
    data = body.get("data")
    if not isinstance(data, str) or len(data) > MAX_DATA_LEN:
        raise WireError(f"field 'data' must be a string of at most {MAX_DATA_LEN} characters", "data")
    return data
