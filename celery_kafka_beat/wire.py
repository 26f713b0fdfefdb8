"""The wire format of the sync topic: versioned JSON records, validated field by field.

Every value is a UTF-8 JSON object ``{"ckb": <protocol version>, "k": <kind>, "s": <session>, "q": <seq>, ...}``.
Nothing read from Kafka is ever unpickled or evaluated: :func:`decode` parses JSON and checks every field's type
and range, and raises :class:`WireError` (saying what is wrong) for anything else. The runtime logs such records
once and skips them; they still advance log time, because their broker timestamp is trustworthy even when their
body is not (see ``docs/protocol.md``).

``(session, seq)`` identifies a record uniquely; a node finds its own records by it when it reads them back, rather
than trusting the offset in the delivery report (which can be -1001 for a retried idempotent message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

#: Version written into every record. A node skips records with a higher version (and says so once).
PROTOCOL_VERSION: Final = 1

#: Upper bounds that keep a malformed or hostile record from costing memory; generous for real use.
MAX_NAME_LEN: Final = 1024
MAX_ITEMS: Final = 100_000
MAX_DATA_LEN: Final = 4 * 1024 * 1024


class WireError(ValueError):
    """A record value that this version cannot use; the message says why."""


class ForeignRecord(WireError):
    """A value not written by celery-kafka-beat at all (not JSON, or without the ``ckb`` marker)."""


class FutureRecord(WireError):
    """A record of a newer protocol version than this node speaks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Starts a session. ``catalog`` is the digest of the entries the node can run (see :class:`CatalogPart`)."""

    session: str
    seq: int
    node: str
    lease_ms: int
    catalog: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Renews every claim of the session; any record of a live session renews it too."""

    session: str
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """Asks for entries. Valid per entry if the session is live, can run it and nobody owns it."""

    session: str
    seq: int
    entries: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Gives entries back; items are ``(entry, epoch)`` so a release can only end the claim it names."""

    session: str
    seq: int
    items: tuple[tuple[str, int], ...]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """Says that ticks were published to the Celery broker; items are ``(entry, tick)``."""

    session: str
    seq: int
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye:
    """Ends the session at once: its claims are void from this offset on."""

    session: str
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogPart:
    """One part of a catalog: the JSON list of entry names a node can run, split into ``parts`` strings."""

    session: str
    seq: int
    digest: str
    part: int
    parts: int
    data: str


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


Record = Hello | Heartbeat | Claim | Release | Decide | Published | Goodbye | CatalogPart | SnapshotPart

_KIND_OF: Final[dict[type, str]] = {
    Hello: "hello",
    Heartbeat: "hb",
    Claim: "claim",
    Release: "release",
    Decide: "decide",
    Published: "published",
    Goodbye: "bye",
    CatalogPart: "catalog",
    SnapshotPart: "snap",
}


def encode(record: Record) -> tuple[bytes, bytes]:
    """Return ``(key, value)``. The key only aids people reading the topic; the protocol ignores it."""
    body: dict[str, object] = {"ckb": PROTOCOL_VERSION, "k": _KIND_OF[type(record)]}
    body["s"] = record.session
    body["q"] = record.seq
    match record:
        case Hello():
            body.update(node=record.node, lease=record.lease_ms, cat=record.catalog)
        case Claim():
            body["e"] = list(record.entries)
        case Release() | Published():
            body["i"] = [list(item) for item in record.items]
        case Decide():
            body["i"] = [[i.entry, i.epoch, i.tick] for i in record.items]
            if record.ack:
                body["a"] = 1
        case CatalogPart():
            body.update(d=record.digest, p=record.part, n=record.parts, data=record.data)
        case SnapshotPart():
            body.update(id=record.snap_id, as_of=record.as_of, p=record.part, n=record.parts, data=record.data)
        case Heartbeat() | Goodbye():
            pass
    key = f"{body['k']}/{record.session}".encode()
    return key, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(value: bytes | None) -> Record:
    """Parse and validate one record value; raise :class:`WireError` saying what is wrong."""
    if value is None:
        raise ForeignRecord("empty value (a tombstone?)")
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ForeignRecord(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or "ckb" not in body:
        raise ForeignRecord("no 'ckb' protocol marker: not a celery-kafka-beat record")
    version = body["ckb"]
    if not _is_int(version) or version < 1:
        raise WireError(f"bad protocol version {version!r}")
    if version > PROTOCOL_VERSION:
        raise FutureRecord(f"protocol version {version} is newer than this node's {PROTOCOL_VERSION}")
    kind = body.get("k")
    session = _name(body, "s")
    seq = _int(body, "q")
    match kind:
        case "hello":
            return Hello(
                session=session,
                seq=seq,
                node=_name(body, "node"),
                lease_ms=_int(body, "lease", lo=1),
                catalog=_name(body, "cat"),
            )
        case "hb":
            return Heartbeat(session=session, seq=seq)
        case "claim":
            entries = _list(body, "e")
            return Claim(session=session, seq=seq, entries=tuple(_check_name(e, "e[]") for e in entries))
        case "release" | "published":
            items = tuple(_pair(item) for item in _list(body, "i"))
            if kind == "release":
                return Release(session=session, seq=seq, items=items)
            return Published(session=session, seq=seq, items=items)
        case "decide":
            ack = body.get("a", 0)
            if ack not in (0, 1) or isinstance(ack, bool):
                raise WireError(f"field 'a' must be 0 or 1, got {ack!r}")
            decided = tuple(_decide_item(i) for i in _list(body, "i"))
            return Decide(session=session, seq=seq, items=decided, ack=ack == 1)
        case "bye":
            return Goodbye(session=session, seq=seq)
        case "catalog":
            part, parts = _parts(body)
            return CatalogPart(
                session=session, seq=seq, digest=_name(body, "d"), part=part, parts=parts, data=_data(body)
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
            )
        case _:
            raise WireError(f"unknown record kind {kind!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: dict[str, object], field: str, *, lo: int = 0) -> int:
    value = body.get(field)
    if not _is_int(value):
        raise WireError(f"field {field!r} must be an integer, got {value!r:.80}")
    assert isinstance(value, int)
    if value < lo:
        raise WireError(f"field {field!r} must be >= {lo}, got {value}")
    return value


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
        raise WireError(f"field {field!r} must be a non-empty string of at most {MAX_NAME_LEN} characters")
    return value


def _name(body: dict[str, object], field: str) -> str:
    return _check_name(body.get(field), field)


def _list(body: dict[str, object], field: str) -> list[object]:
    value = body.get(field)
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise WireError(f"field {field!r} must be a list of at most {MAX_ITEMS} items")
    return value


def _pair(item: object) -> tuple[str, int]:
    if not isinstance(item, list) or len(item) != 2 or not _is_int(item[1]):
        raise WireError(f"item {item!r:.80} must be [name, integer]")
    return _check_name(item[0], "i[][0]"), int(item[1])


def _decide_item(item: object) -> DecideItem:
    if not isinstance(item, list) or len(item) != 3 or not (_is_int(item[1]) and _is_int(item[2])):
        raise WireError(f"item {item!r:.80} must be [entry, epoch, tick]")
    return DecideItem(entry=_check_name(item[0], "i[][0]"), epoch=int(item[1]), tick=int(item[2]))


def _parts(body: dict[str, object]) -> tuple[int, int]:
    part, parts = _int(body, "p"), _int(body, "n", lo=1)
    if part >= parts:
        raise WireError(f"part {part} out of range for {parts} parts")
    return part, parts


def _data(body: dict[str, object]) -> str:
    data = body.get("data")
    if not isinstance(data, str) or len(data) > MAX_DATA_LEN:
        raise WireError(f"field 'data' must be a string of at most {MAX_DATA_LEN} characters")
    return data
