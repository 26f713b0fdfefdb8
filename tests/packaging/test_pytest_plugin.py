"""The pytest plugin users get with the package (``celery_kafka_beat.testing.pytest_plugin``, registered through the
``pytest11`` entry point): a user's test run in its own pytest process, on this session's Kafka."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
# The example of docs/testing.md ("Testing your own beat schedule"), as a user would write it.
USER_TEST = """
import time

from celery.signals import after_task_publish


def test_send_report_ticks(kafka_beat_app, kafka_beat_scheduler):
    @kafka_beat_app.task(name="reports.send")
    def send_report():
        pass

    kafka_beat_app.conf.beat_schedule = {"send-report": {"task": "reports.send", "schedule": 0.5}}
    published = []

    def on_publish(sender=None, headers=None, **kwargs):
        if sender == "reports.send" and headers.get("ckb_entry") == "send-report":
            published.append(headers)

    after_task_publish.connect(on_publish, weak=False)
    try:
        scheduler = kafka_beat_scheduler()
        deadline = time.monotonic() + 30
        while not published and time.monotonic() < deadline:
            scheduler.tick()  # publishes what is due; waits (at most 1 s) for the next tick
    finally:
        after_task_publish.disconnect(on_publish)
    assert published, "send-report did not tick within 30 s"
"""

# What the user's run must not do behind their back: start a second broker, or get its fixtures from anywhere but the
# installed plugin.
SETUP_TEST = """
import os


def test_uses_the_named_cluster(kafka_beat_bootstrap):
    assert kafka_beat_bootstrap == os.environ["CKB_KAFKA_BOOTSTRAP"]


def test_fixtures_come_from_the_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("celery_kafka_beat")
    assert plugin is not None
    assert plugin.__name__ == "celery_kafka_beat.testing.pytest_plugin"
"""

# Why 120 s: the inner run imports Celery and waits for one tick of a 0.5 s entry (about 3 s measured on a warm
# broker; the user's test gives up after 30 s), then stops the scheduler cleanly.
INNER_RUN_TIMEOUT_S = 120.0
# Why 60 s: a fresh interpreter importing one module takes well under a second.
IMPORT_TIMEOUT_S = 60.0


def test_a_users_schedule_ticks_under_the_plugin(
    pytester: pytest.Pytester, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a user's test suite with no conftest.py, pointed at this session's broker
    monkeypatch.setenv("CKB_KAFKA_BOOTSTRAP", kafka_bootstrap)
    pytester.makepyfile(test_schedule=USER_TEST, test_setup=SETUP_TEST)

    # When it runs in its own pytest process, warnings as errors
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", timeout=INNER_RUN_TIMEOUT_S)

    # Then the entry ticked and the fixtures came from the installed plugin
    result.assert_outcomes(passed=3)


def _imported_after(module: str, cwd: Path) -> list[str]:
    """The modules of Celery, kombu and the Kafka client that a fresh interpreter holds after importing ``module``."""
    code = (
        f"import json, sys, {module}\n"
        f"assert {module!r} in sys.modules\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'celery', 'kombu', 'confluent_kafka'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout)
    return modules


def test_importing_the_plugin_imports_neither_celery_nor_the_kafka_client(tmp_path: Path) -> None:
    # pytest imports the plugin in every test run of an environment that has the package installed.
    assert _imported_after("celery_kafka_beat.testing.pytest_plugin", tmp_path) == []
    # The probe sees them when they are imported (it is not blind).
    imported = _imported_after("celery_kafka_beat.scheduler", tmp_path)
    assert "celery" in imported
    assert "confluent_kafka" in imported


def test_the_docs_show_the_example_that_runs() -> None:
    section = DOCS.read_text(encoding="utf-8").split("## Testing your own beat schedule", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    assert example.group(1).strip() == USER_TEST.strip()
