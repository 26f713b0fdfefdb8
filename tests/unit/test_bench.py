"""The benchmark suite's pure parts: how ticks are counted as missed or duplicated, the spread schedule, and the
report (every section renders from a results file, and says 'no' where a target is missed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from proof.bench import report
from proof.bench.app import entries
from proof.bench.harness import Received, pct, summary
from proof.bench.scenarios import _grid_outcome, spread_period

TIMES = "\N{MULTIPLICATION SIGN}"


def _r(entry: str, second: int, pid: int = 1, task_id: str | None = None) -> Received:
    return Received(entry, second * 1000, pid, task_id or f"{entry}-{second}-{pid}", second * 1000 + 5)


def test_grid_outcome_counts_missing_and_duplicated_seconds() -> None:
    received = [_r("a", s) for s in (10, 11, 13)] + [_r("a", 12, 2), _r("a", 12, 3)]  # 12 twice, by two senders
    received += [_r("b", s) for s in range(10, 14)] + [_r("b", 11, 2, task_id="b-11-1")]  # a re-send: same id
    out = _grid_outcome(received, ["a", "b"], 10_000, 14_000)
    assert out == {"expected": 8, "missing": 0, "duplicates": 2, "resent_same_id": 1}
    out = _grid_outcome([_r("a", 10)], ["a"], 10_000, 13_000)
    assert out["missing"] == 2  # 11 and 12


def test_spread_entries_tick_at_the_asked_rate() -> None:
    period = spread_period(1000, 200)
    spec = entries({"n": 1000, "kind": "spread", "period": period})
    rate = sum(1 / item["schedule"].run_every.total_seconds() for item in spec.values())
    assert abs(rate - 200) < 1
    assert len({item["schedule"].run_every for item in spec.values()}) == 1000  # all phases differ
    probe = entries({"n": 1, "kind": "grid", "period": 1, "probe": 0.1})
    assert probe["probe"]["schedule"].run_every.total_seconds() == 0.1
    assert probe["e000000"]["schedule"].relative


def test_percentiles() -> None:
    assert pct([], 50) != pct([], 50)  # NaN
    assert pct([1, 2, 3, 4], 50) == 2
    assert pct(list(range(1, 101)), 99) == 99
    assert summary([3.0, 1.0])["max"] == 3.0


def _stat(p50: float, p99: float) -> dict[str, Any]:
    return {"n": 30, "p50": p50, "p99": p99, "max": p99}


def _system(label: str, system: str, conf: dict[str, Any], kill: float, term_delay: float) -> dict[str, Any]:
    faults = [
        {"signal": sig, "gap_ms": kill, "delay_ms": term_delay if sig == "SIGTERM" else kill - 500}
        for sig in ("SIGKILL", "SIGTERM")
    ]
    return {
        "label": label,
        "system": system,
        "replicas": 3,
        "conf": conf,
        "faults": faults,
        "expected": 1000,
        "missing": 12,
        "duplicates": 0,
        "resent_same_id": 0,
        "SIGKILL": {**_stat(kill, kill), "censored": 0, "delay": _stat(kill - 500, kill - 500)},
        "SIGTERM": {**_stat(600, 900), "censored": 0, "delay": _stat(term_delay, term_delay)},
    }


def _results(kafka_tp: float) -> dict[str, Any]:
    late = {"n": 100, "p50": 1, "p99": 5, "max": 9}
    load = {"ticks": 6000, "expected": 6000, "duplicates": 0, "late_ms": late, "cpu": 0.3, "rss_mb": 90.0, "dead": []}
    return {
        "started": "2026-11-29 09:00:00 UTC",
        "finished": "2026-11-29 10:00:00 UTC",
        "quick": False,
        "machine": {"cpus": 2, "cpu": "x", "memory": "24 GB", "python": "3.11", "kafka": "4.1.1", "versions": {}},
        "calibrate": {"messages": 5000, "cpu_us": 240, "wall_us": 290, "per_s": 3400},
        "failover": {
            "kills": 30,
            "systems": [
                _system("ckb", "kafka", {}, 2900, 20),
                _system("ckb short", "kafka", {"kafka_beat_lease": 0.5}, 600, 15),
                _system("RedBeat short", "redbeat", {"beat_max_loop_interval": 1}, 5400, 40),
            ],
        },
        "redbeat_default": {"lock_ttl_after_kill_ms": 1499000, "watched_s": 120, "standby_dispatched": False},
        "lateness": {
            "rate": 200,
            "measure_s": 30,
            "rows": [
                {**load, "label": label, "system": system, "replicas": replicas, "entries": n}
                for n in (1000, 10_000)
                for label, system, replicas in (("ckb x3", "kafka", 3), ("stock", "stock", 1))
            ],
        },
        "throughput": {
            "entries": 10_000,
            "measure_s": 12,
            "systems": [
                {
                    "label": "ckb x3",
                    "system": "kafka",
                    "replicas": 3,
                    "best_rate": kafka_tp,
                    "steps": [{**load, "rate": kafka_tp, "ok": True}],
                }
            ],
        },
        "startup": {
            "history": 1000,
            "rows": [
                {
                    "label": "ckb",
                    "system": "kafka",
                    "entries": 100_000,
                    "first_probe_ms": 2000,
                    "first_owning_ms": 3000,
                    "restart_probe_ms": 2000,
                    "restart_owning_ms": 2500,
                    "history_probe_ms": 4000,
                    "history_owning_ms": 4100,
                    "history_records": 1002,
                    "first_rss_mb": 250.0,
                    "restart_rss_mb": 240.0,
                }
            ],
        },
        "idle": {
            "measure_s": 60,
            "rows": [
                {
                    "label": "ckb",
                    "system": "kafka",
                    "replicas": 3,
                    "cpu_per_replica": [0.004, 0.005, 0.006],
                    "rss_mb": [80.0, 80.0, 80.0],
                    "kafka_records_per_s": 3.0,
                    "redis_commands_per_s": 1.0,
                }
            ],
        },
        "rebalance": {
            "joins": [{"share": 20, "spawn_to_share_ms": 2500, "first_to_share_ms": 300, "spawn_to_first_ms": 2200}],
            "expected": 3000,
            "missing": 0,
            "duplicates": 0,
            "resent_same_id": 0,
            "spawn_to_share": _stat(2500, 2500),
            "first_to_share": _stat(300, 300),
        },
    }


def test_report_renders_every_section_and_judges_each_target(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    report.write(_results(kafka_tp=2500), out, tmp_path)
    text = out.read_text()
    for heading in (
        "## Targets",
        "## Method",
        "## The floor",
        "## Failover",
        "## Dispatch lateness",
        "## Throughput",
        "## Start-up",
        "## Idle cost",
        "## Rebalance",
        "## Caveats",
    ):
        assert heading in text, heading
    assert report.COMMAND in text
    assert "| ≥ 5,000 ticks/s with 3 replicas | 2,500 ticks/s" in text
    assert "| no |" in text
    assert "| failover after SIGKILL, defaults: p99 < 5 s | p99 2.90 s" in text
    assert f"1.9{TIMES}" in text  # RedBeat short against celery-kafka-beat defaults, SIGKILL p50: 5400 / 2900
    for png in ("bench-failover.png", "bench-lateness.png", "bench-throughput.png"):
        assert (out.parent / png).stat().st_size > 1000
    report.write(_results(kafka_tp=6000), out, tmp_path)
    assert "| ≥ 5,000 ticks/s with 3 replicas | 6,000 ticks/s" in out.read_text()
    assert not math.isnan(float(report._ratio(2, 1).rstrip(TIMES)))
