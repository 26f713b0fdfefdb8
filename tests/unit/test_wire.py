"""The wire format: every kind round-trips; anything else is refused with a WireError, never another exception."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_kafka_beat import wire

RECORDS: list[wire.Record] = [
    wire.Hello(session="s1", seq=1, node="host:1", lease_ms=3000, catalog="abc"),
    wire.Heartbeat(session="s1", seq=2),
    wire.Claim(session="s1", seq=3, entries=("a", "b")),
    wire.Release(session="s1", seq=4, items=(("a", 3),)),
    wire.Decide(session="s1", seq=5, items=(wire.DecideItem(entry="a", epoch=3, tick=1_700_000_000_000),)),
    wire.Published(session="s1", seq=6, items=(("a", 1_700_000_000_000),)),
    wire.Goodbye(session="s1", seq=7),
    wire.CatalogPart(session="s1", seq=8, digest="abc", part=0, parts=2, data='["a",'),
    wire.SnapshotPart(session="s1", seq=9, snap_id="s1/1", as_of=41, part=1, parts=2, data="{}"),
    wire.Ready(session="s1", seq=10),
    wire.Expire(session="s1", seq=11, items=(("s2", 40),)),
    wire.Wait(session="w1", seq=1, low=12, mark=True),
    wire.Wait(session="w1", seq=2, low=12),
    wire.Genesis(session="w1", seq=3, start=13, elapsed_ms=33_000, floor=1_700_000_000_000),
    wire.Heartbeat(session="s1", seq=12, hold=(1_700_000_000_000, 2500)),
    wire.Hello(session="s0", seq=1, node="old:1", lease_ms=3000, catalog="abc", version=1),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_kind_round_trips(record: wire.Record) -> None:
    key, value = wire.encode(record)
    assert wire.decode(value) == record
    assert key.startswith(json.loads(value)["k"].encode())


@pytest.mark.parametrize(
    "value",
    [
        b'{"ckb":1,"k":"hb","s":"x","q":' + b"1" * 5000 + b"}",
        b'{"ckb":2,"k":"hb","s":"x","q":' + b"1" * 5000 + b"}",
        b'{"ckb":2,"k":"decide","s":"x","q":1,"i":[["e",1,' + b"9" * 30 + b"]]}",
        b"[" * 100_000,
        b'{"ckb":2,"k":"hb","s":"x","q":NaN}',
        b'{"ckb":2,"k":"hb","s":"x","q":Infinity}',
        b'{"ckb":2,"k":"hb","s":"x","q":1e999}',
        b'{"ckb":2,"k":"hb","s":"x","q":1,"w":[1,-5]}',
        b'{"ckb":2,"k":"hb","s":"x","q":1,"w":"soon"}',
        b'{"ckb":2,"k":"wait","s":"x","q":1,"low":1,"mark":true}',
        b'{"ckb":1,"k":"ready","s":"x","q":1}',
        b'{"ckb":2,"k":"snap","s":"x","q":1,"id":"a","as_of":1,"p":0,"n":100001,"data":""}',
        b" " * (wire.MAX_VALUE_BYTES + 1),
    ],
    ids=[
        "v1-int-5000-digits",
        "int-5000-digits",
        "tick-30-digits",
        "nesting",
        "nan",
        "infinity",
        "huge-float",
        "negative-held",
        "bad-hold",
        "bool-mark",
        "v1-new-kind",
        "too-many-parts",
        "too-large",
    ],
)
def test_poison_values_raise_wire_errors_only(value: bytes) -> None:
    """Reproduced: a 5 KB heartbeat with a 5,000-digit seq made json.loads raise a plain ValueError that stopped
    every replica, once a second, for ever."""
    with pytest.raises(wire.WireError) as caught:
        wire.decode(value)
    assert caught.value.code


def test_each_kind_of_problem_has_a_stable_code() -> None:
    codes = set()
    for value in (b"nope", b"[]", b'{"ckb":9}', b'{"ckb":2,"k":"x"}', b'{"ckb":2,"k":"hb","s":"","q":1}'):
        with pytest.raises(wire.WireError) as caught:
            wire.decode(value)
        codes.add(caught.value.code)
    assert codes == {"not-json", "no-marker", "future-version", "unknown-kind", "hb:s"}


def test_future_version_is_refused_as_such() -> None:
    _, value = wire.encode(RECORDS[1])
    body = json.loads(value)
    body["ckb"] = wire.PROTOCOL_VERSION + 1
    with pytest.raises(wire.FutureRecord, match="newer"):
        wire.decode(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, wire.ForeignRecord),
        (b"\x80\x81", wire.ForeignRecord),
        (b"[1,2]", wire.ForeignRecord),
        (b'{"hello": 1}', wire.ForeignRecord),
        (b'{"ckb": 1, "k": "nope", "s": "s", "q": 1}', wire.WireError),
        (b'{"ckb": 1, "k": "hb", "s": "", "q": 1}', wire.WireError),
        (b'{"ckb": 1, "k": "hb", "s": "s", "q": true}', wire.WireError),
        (b'{"ckb": 1, "k": "claim", "s": "s", "q": 1, "e": "notalist"}', wire.WireError),
        (b'{"ckb": 1, "k": "decide", "s": "s", "q": 1, "i": [["a", 1]]}', wire.WireError),
        (
            b'{"ckb": 1, "k": "snap", "s": "s", "q": 1, "id": "x", "as_of": 1, "p": 2, "n": 2, "data": ""}',
            wire.WireError,
        ),
        (b'{"ckb": 1, "k": "hello", "s": "s", "q": 1, "node": "n", "lease": 0, "cat": "c"}', wire.WireError),
    ],
)
def test_malformed_values_say_what_is_wrong(value: bytes | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        wire.decode(value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_wire_errors(value: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(value)


FIELDS = ["s", "q", "node", "lease", "cat", "e", "i", "d", "p", "n", "data", "id", "as_of", "w", "low", "mark", "el"]
FIELDS += ["from", "floor", "a"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(wire.KINDS),
    st.dictionaries(
        st.sampled_from(FIELDS),
        json_values,
    ),
    st.sampled_from([1, 2]),
)
def test_structured_garbage_of_every_kind_only_raises_wire_errors(
    kind: str, fields: dict[str, object], version: int
) -> None:
    value = json.dumps({"ckb": version, "k": kind, **fields}).encode()
    try:
        record = wire.decode(value)
    except wire.WireError:
        return
    assert wire.decode(wire.encode(record)[1]) == record


def test_a_decide_says_whether_its_publishes_will_be_confirmed() -> None:
    item = wire.DecideItem(entry="e", epoch=3, tick=5)
    for ack in (False, True):
        record = wire.Decide(session="s", seq=1, items=(item,), ack=ack)
        assert wire.decode(wire.encode(record)[1]) == record
    with pytest.raises(wire.WireError, match="'a' must be 0 or 1"):
        wire.decode(b'{"ckb":1,"k":"decide","s":"s","q":1,"i":[],"a":2}')
