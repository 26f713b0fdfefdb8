"""The short chaos run of the default suite: the real harness (3 Kafka brokers, real ``celery beat`` replicas,
Redis, the recorder) with a fixed seed whose plan has every fault kind once, in both delivery modes, judged by
the checker. The long run is ``python -m celery_kafka_beat.chaos run --minutes 30 --report docs/reliability.md``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from celery_kafka_beat.chaos import checker
from celery_kafka_beat.chaos.harness import KINDS, GroupSpec, Harness, default_entries, make_plan

SEED = 11


def test_plan_replays_from_its_seed_and_has_every_kind() -> None:
    plan = make_plan(SEED, 0, lease=3.0)
    assert plan == make_plan(SEED, 0, lease=3.0)
    assert sorted(f.kind for f in plan) == sorted(KINDS)
    assert make_plan(SEED + 1, 0, lease=3.0) != plan
    longer = make_plan(SEED, 600, lease=3.0)
    assert longer[: len(plan)] == plan
    assert len(longer) >= 60


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
    alo, amo = report.groups["alo"].total, report.groups["amo"].total
    assert alo.expected > 1000
    assert amo.expected > 1000
    assert alo.missing_not_allowed == alo.missing_once == alo.missing_at_most_once == 0
    assert alo.duplicate_ticks_violating == 0
    assert amo.duplicate_ticks == 0
