"""The chaos harness's ``poison`` fault: record values that no replica can use, or that lie, written straight to a
group's sync topic by a plain Kafka producer (not through any replica's proxies).

:func:`poison_values` builds one burst: the records reproduced in issue 12 (a 5 KB heartbeat whose sequence number
has 5,000 digits, in protocol versions 1 and 2; a catalog whose data is nested 10,000 deep or holds a 5,000-digit
integer; snapshot parts of one id that disagree on their part count; a snapshot holding ``Infinity``; one that does
not parse; a snapshot part whose ``as_of`` lies far beyond its own offset), arbitrary bytes, JSON that is not ours,
a null value, and well-formed records of every kind from session ids that no replica ever used: claims of every
entry, ``expire`` votes naming the live sessions' latest records, confirmations and decisions of the next ticks,
``ready``, ``wait``, ``bye``, a genesis, a hello whose lease the protocol refuses. None is written as a live
session: impersonating one is outside the threat model the harness tests (docs/guarantees.md).

Each value comes with a label (what it is), so that the fault log can say what was written. Deterministic for a
given ``rng`` and inputs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence

__all__ = ["REPRODUCED", "poison_values"]

#: The values of the issue's reproduced cases that do not depend on the topic (label, value).
REPRODUCED: tuple[tuple[str, bytes], ...] = (
    ("hb-5000-digits-v1", b'{"ckb":1,"k":"hb","s":"x","q":' + b"1" * 5000 + b"}"),
    ("hb-5000-digits-v2", b'{"ckb":2,"k":"hb","s":"x","q":' + b"7" * 5000 + b"}"),
    (
        "snap-data-5000-digits",
        b'{"ckb":2,"k":"snap","s":"x","q":1,"id":"i","as_of":1,"p":0,"n":1,"data":"' + b"9" * 5000 + b'"}',
    ),
    ("nested-100000", b"[" * 100_000),
    ("q-1e999999", b'{"ckb":2,"k":"hb","s":"x","q":1e999999}'),
    ("q-NaN", b'{"ckb":2,"k":"hb","s":"x","q":NaN}'),
    ("foreign-json", b'{"hello": "world"}'),
    ("foreign-json-list", b"[[[]]]"),
    ("not-utf8", b"\xff\xfe garbage"),
    ("future-version", b'{"ckb":99,"k":"hb","s":"x","q":1}'),
    ("unknown-kind", b'{"ckb":2,"k":"nope","s":"x","q":1}'),
)


def poison_values(
    rng: random.Random,
    *,
    offset: int,
    sessions: Mapping[str, int],
    entries: Sequence[str],
    next_ticks: Mapping[str, int],
    now_ms: int,
) -> list[tuple[str, bytes | None]]:
    """One burst of poison for a topic whose end offset is about ``offset``.

    ``sessions`` maps the sessions live in the topic to the offset of their latest record (the votes name them),
    ``entries`` are the group's entries and ``next_ticks`` each entry's next tick (the lying decisions and
    confirmations name them). The strangers' session ids are random and prefixed ``poison-``.
    """
    stranger = f"poison-{rng.getrandbits(48):012x}"
    known = sorted(sessions.items()) or [("nobody", max(0, offset - 1))]
    ticks = sorted(next_ticks.items()) or [(e, now_ms) for e in entries]
    past = max(-1, offset - 1)
    some_entry = rng.choice(list(entries)) if entries else "e00"

    def body(kind: str, q: int, **fields: object) -> dict[str, object]:
        return {"ckb": 2, "k": kind, "s": stranger, "q": q, **fields}

    # Structurally valid records of a session no replica knows: each must be used for nothing.
    structured: list[tuple[str, dict[str, object]]] = [
        ("catalog-nested", body("catalog", 1, d="d" * 32, p=0, n=1, data="[" * 10_000)),
        ("catalog-5000-digits", body("catalog", 2, d="e" * 32, p=0, n=1, data="[" + "9" * 5000 + "]")),
        ("snap-parts-disagree", body("snap", 3, id="x", as_of=past, p=0, n=2, data="{")),
        ("snap-parts-disagree", body("snap", 4, id="x", as_of=past, p=1, n=3, data="}")),
        ("snap-infinity", body("snap", 5, id="y", as_of=past, p=0, n=1, data='{"v":2,"offset":Infinity}')),
        ("snap-unparseable", body("snap", 6, id="z", as_of=past, p=0, n=1, data="{not json")),
        ("snap-as-of-future", body("snap", 7, id="f", as_of=10**15, p=0, n=1, data="{}")),
        ("snap-as-of-ahead", body("snap", 8, id="g", as_of=offset + 1_000_000, p=0, n=1, data="{}")),
        ("claim-every-entry", body("claim", 9, e=list(entries))),
        ("expire-live-sessions", body("expire", 10, i=[[sid, last] for sid, last in known])),
        ("published-next-ticks", body("published", 11, i=[[e, t] for e, t in ticks])),
        ("decide-next-ticks", body("decide", 12, i=[[e, rng.randrange(max(1, offset)), t] for e, t in ticks])),
        ("release", body("release", 13, i=[[some_entry, rng.randrange(max(1, offset))]])),
        ("ready", body("ready", 14)),
        ("hb", body("hb", 15)),
        ("bye", body("bye", 16)),
        ("wait", body("wait", 17, low=rng.randrange(max(1, offset)))),
        ("wait-mark", body("wait", 18, low=rng.randrange(max(1, offset)), mark=1)),
        ("genesis", body("genesis", 19, **{"from": max(0, offset - 3), "el": 10**9, "floor": now_ms + 86_400_000})),
        ("hello-lease-too-long", body("hello", 20, node="poison", lease=10**9, cat="d" * 32)),
        ("hello-future-version", {**body("hello", 21, node="poison", lease=3000, cat="d" * 32), "ckb": 3}),
        ("decide-epoch-beyond-64-bits", body("decide", 22, i=[[some_entry, 10**30, now_ms]])),
        ("hb-hold-beyond-64-bits", body("hb", 23, w=[2**64, 1])),
    ]
    values: list[tuple[str, bytes | None]] = list(REPRODUCED)
    values += [(label, json.dumps(b).encode()) for label, b in structured]
    values += [("null", None)]
    values += [("random-bytes", rng.randbytes(rng.randint(0, 200))) for _ in range(3)]
    rng.shuffle(values)
    return values
