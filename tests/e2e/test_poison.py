"""End to end: records that no replica can use, written to the sync topic under three real ``celery beat``
replicas, stop nothing (reproduced: one 5 KB heartbeat with a 5,000-digit sequence number made every replica
restart from the topic once a second, for good, and no tick was published after it)."""

from __future__ import annotations

import json
import math
import random
import time

from confluent_kafka import Producer

from celery_kafka_beat.runtime import read_cluster_state
from tests.e2e.support import Deployment, Received, Recorder, duplicates, percentile, wait_complete
from tests.e2e.test_beat import EVERY_SECOND, START_TIMEOUT_S, assert_every_tick_once

ENTRIES = [f"p{i}" for i in range(5)]
#: Each (value, code of the problem): the issue's reproduced records, then other poison of the same class.
POISON: list[tuple[bytes | None, str]] = [
    (b'{"ckb":1,"k":"hb","s":"x","q":' + b"1" * 5000 + b"}", "not-json"),
    (b'{"ckb":2,"k":"hb","s":"x","q":' + b"7" * 5000 + b"}", "not-json"),
    (b"[" * 50_000, "not-json"),
    (b'{"ckb":2,"k":"hb","s":"x","q":NaN}', "not-json"),
    (None, "empty"),
    (b"\xff\xfe garbage", "not-json"),
    (b'{"hello": "world"}', "no-marker"),
    (b'{"ckb":99,"k":"hb","s":"x","q":1}', "future-version"),
    (b'{"ckb":2,"k":"nope","s":"x","q":1}', "unknown-kind"),
    (b'{"ckb":2,"k":"decide","s":"x","q":1,"i":[["p0",1,' + b"9" * 40 + b"]]}", "decide:i"),
]


def _structured_poison(offset: int) -> list[bytes]:
    """Well-formed records that lie or break what is derived from them; none names a live session."""
    stranger = "poison-" + "".join(random.choices("abcdef", k=8))
    bodies: list[dict[str, object]] = [
        # A catalog whose data breaks parsers: nesting, a 5,000-digit integer.
        {"ckb": 2, "k": "catalog", "s": stranger, "q": 1, "d": "d" * 32, "p": 0, "n": 1, "data": "[" * 10_000},
        {
            "ckb": 2,
            "k": "catalog",
            "s": stranger,
            "q": 2,
            "d": "e" * 32,
            "p": 0,
            "n": 1,
            "data": "[" + "9" * 5000 + "]",
        },
        # Snapshot parts of one id with inconsistent part counts; a snapshot holding Infinity; one that does not parse.
        {"ckb": 2, "k": "snap", "s": stranger, "q": 3, "id": "x", "as_of": offset, "p": 0, "n": 2, "data": "{"},
        {"ckb": 2, "k": "snap", "s": stranger, "q": 4, "id": "x", "as_of": offset, "p": 1, "n": 3, "data": "}"},
        {
            "ckb": 2,
            "k": "snap",
            "s": stranger,
            "q": 5,
            "id": "y",
            "as_of": offset,
            "p": 0,
            "n": 1,
            "data": '{"v":2,"offset":Infinity}',
        },
        {"ckb": 2, "k": "snap", "s": stranger, "q": 6, "id": "z", "as_of": offset, "p": 0, "n": 1, "data": "{not"},
        # A snapshot part claiming a state far in the future.
        {"ckb": 2, "k": "snap", "s": stranger, "q": 7, "id": "f", "as_of": 10**15, "p": 0, "n": 1, "data": "{}"},
        # Records of a session nobody knows: claims, votes, confirmations.
        {"ckb": 2, "k": "claim", "s": stranger, "q": 8, "e": ENTRIES},
        {"ckb": 2, "k": "expire", "s": stranger, "q": 9, "i": [["anyone", offset]]},
        {"ckb": 2, "k": "published", "s": stranger, "q": 10, "i": [["p0", 1]]},
    ]
    return [json.dumps(body).encode() for body in bodies]


def _lateness_p99(received: list[Received], start: float, end: float) -> float:
    values = [r.lateness_ms for r in received if start <= r.tick / 1000 < end]
    assert len(values) > 20, f"too few ticks in [{start}, {end}): {len(values)}"
    return percentile(values, 99)


def test_poison_records_are_skipped_and_ticks_go_on(deploy: Deployment) -> None:
    deploy.schedule = dict.fromkeys(ENTRIES, EVERY_SECOND)
    with Recorder(deploy.broker, deploy.queue) as recorder:
        beats = [deploy.beat(f"p{i}") for i in range(3)]
        recorder.wait(lambda rs: {r.entry for r in rs} == set(ENTRIES), START_TIMEOUT_S, "every entry dispatched")
        before_from = time.time() + 1
        recorder.wait(lambda rs: any(r.received > before_from + 12 for r in rs), 30, "12 s of ticks before the poison")
        poisoned_at = time.time()
        state = read_cluster_state(deploy.kafka, deploy.topic)
        producer = Producer({"bootstrap.servers": deploy.kafka, "linger.ms": 0})
        values = [value for value, _ in POISON] * 3 + _structured_poison(state.offset)
        for value in values:
            producer.produce(deploy.topic, value, partition=0)
        assert producer.flush(10) == 0
        recorder.wait(lambda rs: any(r.received > poisoned_at + 13 for r in rs), 40, "ticks after the poison")
        # A replica started now reads the poison at start-up too.
        beats[0].stop()
        restarted = deploy.beat("p9")
        restarted.wait_log("is live at offset", START_TIMEOUT_S)
        end = math.floor(time.time()) - 2
        received = wait_complete(recorder, ENTRIES, end * 1000)
        assert all(b.proc is not None and b.proc.poll() is None for b in [*beats[1:], restarted])
    assert not duplicates(received)
    assert_every_tick_once(received, ENTRIES, end * 1000)
    before = _lateness_p99(received, before_from, poisoned_at)
    after = _lateness_p99(received, poisoned_at + 1, poisoned_at + 13)
    for beat in [*beats, restarted]:
        text = beat.text()
        assert "unexpected error" not in text, beat.name
        skipped = [line for line in text.splitlines() if "skipping a record the sync topic holds" in line]
        # Logged once per kind of problem, however many such records: 5 codes in POISON appear 3 times each.
        codes = [line.rsplit("(", 1)[-1].split(")")[0] for line in skipped]
        assert len(codes) == len(set(codes)), f"{beat.name} logged a kind twice: {codes}"
        assert "not-json" in codes, beat.name
    print(
        f"\n[e2e] {len(values)} poison records: every tick once; lateness p99 {before:.0f} ms before, "
        f"{after:.0f} ms after"
    )
    assert after <= max(2 * before, before + 100), f"lateness p99 went from {before:.0f} to {after:.0f} ms"
