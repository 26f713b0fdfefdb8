"""The short chaos run of the default suite: the real harness (3 Kafka brokers, real ``celery beat`` replicas,
Redis, the recorder) with a fixed seed whose plan has every fault kind once, in both delivery modes, judged by
the checker. The long run is ``python -m celery_kafka_beat.chaos run --minutes 30 --report docs/reliability.md``.

Seed 749's plan keeps the crash loop and the deaf replica away from the faults that can leave a group without a
single ready session for a while (a rolling restart, which restarts every replica faster than the probation, and a
broker crash, after which sessions may end at once): then protocol 2 makes every live session a candidate, a
crash-looping joiner's too (found by the chaos harness; see docs/reliability.md). The long run meets them together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from celery_kafka_beat.chaos import checker
from celery_kafka_beat.chaos.harness import KINDS, GroupSpec, Harness, default_entries, make_plan
from celery_kafka_beat.chaos.poison import REPRODUCED, poison_values
from celery_kafka_beat.wire import WireError, decode

SEED = 749


def test_plan_replays_from_its_seed_and_has_every_kind() -> None:
    plan = make_plan(SEED, 0, lease=3.0)
    assert plan == make_plan(SEED, 0, lease=3.0)
    assert sorted(f.kind for f in plan) == sorted(KINDS)
    assert make_plan(SEED + 1, 0, lease=3.0) != plan
    longer = make_plan(SEED, 600, lease=3.0)
    assert longer[: len(plan)] == plan
    assert len(longer) >= 60


def test_short_plan_keeps_the_sick_replicas_apart_from_rolling_restarts_and_broker_crashes() -> None:
    plan = make_plan(SEED, 0, lease=3.0)
    sick = [(f.at, f.at + f.duration + 3.0 + 5.0 + 1.0) for f in plan if f.kind in ("crash-loop", "deaf")]
    # A rolling restart's new replicas are ready some 8 s after its last step; a broker crash's sessions as long
    danger = [(f.at, f.at + f.duration + 8.0 + (6.0 if f.kind == "rolling" else 0)) for f in plan]
    danger = [w for w, f in zip(danger, plan, strict=True) if f.kind in ("rolling", "broker")]
    assert not [(s, d) for s in sick for d in danger if s[0] < d[1] and d[0] < s[1]]
    assert max(f.at + f.duration for f in plan) < 100  # the test stays within about 4 minutes


def test_poison_burst_holds_the_reproduced_records_and_impersonates_no_session() -> None:
    import random  # noqa: PLC0415

    sessions = {"live-a": 40, "live-b": 41}
    values = poison_values(
        random.Random(1),
        offset=42,
        sessions=sessions,
        entries=["e00", "e01"],
        next_ticks={"e00": 1_000_000, "e01": 1_001_000},
        now_ms=999_000,
    )
    assert set(REPRODUCED) <= set(values)
    labels = {label for label, _ in values}
    for wanted in ("catalog-nested", "catalog-5000-digits", "snap-parts-disagree", "snap-infinity", "null"):
        assert wanted in labels
    assert {"snap-unparseable", "snap-as-of-future", "random-bytes", "claim-every-entry", "expire-live-sessions"} <= (
        labels
    )
    usable = []
    for label, value in values:
        try:
            record = decode(value)
        except WireError:
            continue
        # Never a live session's id (those are 32 hex digits): the stranger's, or the "x"
        assert record.session.startswith("poison-") or record.session == "x", label
        assert record.session not in sessions
        usable.append(label)
    assert {"claim-every-entry", "expire-live-sessions", "published-next-ticks", "ready", "bye", "wait"} <= set(usable)
    expire = next(json.loads(v) for label, v in values if label == "expire-live-sessions" and v is not None)
    assert expire["i"] == [["live-a", 40], ["live-b", 41]]  # it names their latest records: only its writer is wrong


@pytest.mark.kafka3
@pytest.mark.timeout(900)
def test_short_chaos_run_every_fault_kind_both_delivery_modes(tmp_path: Path) -> None:
    groups = [
        GroupSpec("alo", "at-least-once", "all", default_entries()),
        GroupSpec("amo", "at-most-once", "once", default_entries()),
    ]
    run_dir = tmp_path / "run"
    summary = Harness(run_dir, SEED, 0, groups).run()
    report = checker.check(run_dir)
    print(checker.render_text(report))

    assert summary["unexpected_exits"] == []
    applied: dict[str | None, set[str]] = defaultdict(set)
    for line in (run_dir / "faults.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["phase"] == "start":
            applied[event["group"]].add(event["kind"])
    for group in ("alo", "amo"):
        assert applied[group] | applied[None] == set(KINDS), f"{group}: not every kind applied: {summary['skipped']}"
    assert summary["settled"], "not every tick arrived after the faults"
    assert report.ok, "\n".join(report.violations[:20])
    for name, result in report.groups.items():
        # The poison was read and skipped, each kind of problem logged once per replica (else a violation)
        assert "not-json" in result.skipped_kinds, name
        # The sick replicas cost the others nothing (else a violation): shown per kind
        for kind in ("poison", "deaf", "crash-loop"):
            assert result.near[kind].unexplained == 0, (name, kind)
    alo, amo = report.groups["alo"].total, report.groups["amo"].total
    assert alo.expected > 1000
    assert amo.expected > 1000
    assert alo.missing_not_allowed == alo.missing_once == alo.missing_at_most_once == 0
    assert alo.duplicate_ticks_violating == 0
    assert amo.duplicate_ticks == 0
