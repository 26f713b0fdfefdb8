"""The README's main command works: the demo starts Kafka, Redis, three beat replicas and a worker, kills an owner
and reports every tick run exactly once."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.support import PACKAGE_PARENT


def test_the_demo_runs_and_reports_every_tick_once() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery_kafka_beat.demo", "--seconds", "20", "--kill-after", "8"],
        cwd=PACKAGE_PARENT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "== SIGKILL" in out
    assert "took send-metrics over" in out
    assert "duplicates 0, missed 0" in out
    assert "OK: every tick ran exactly once" in out
