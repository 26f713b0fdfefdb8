"""The Celery app the end-to-end tests run in real ``celery beat`` / ``celery worker`` processes.

Configured from the environment by the tests (see ``tests/e2e/support.py``): the Celery broker, the Kafka
cluster and topic, the queue the ticks go to, extra settings and the schedule, as JSON.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule, solar

app = Celery("ckb_e2e")
app.conf.update(
    broker_url=os.environ["CKB_E2E_BROKER"],
    broker_connection_retry_on_startup=True,
    kafka_beat_bootstrap_servers=os.environ["CKB_E2E_KAFKA"],
    kafka_beat_topic=os.environ["CKB_E2E_TOPIC"],
    task_default_queue=os.environ["CKB_E2E_QUEUE"],
    worker_hijack_root_logger=False,
)
if os.environ.get("CKB_E2E_NODE"):
    app.conf.kafka_beat_node_name = os.environ["CKB_E2E_NODE"]
app.conf.update(json.loads(os.environ.get("CKB_E2E_CONF", "{}")))


def _schedule(spec: dict[str, Any]) -> Any:
    if "every" in spec:
        return schedule(timedelta(seconds=spec["every"]), relative=spec.get("relative", False))
    if "crontab" in spec:
        return crontab(**spec["crontab"])
    if "solar" in spec:
        return solar(*spec["solar"])
    if "raw" in spec:
        return spec["raw"]  # passed through as is (bad-input tests)
    raise ValueError(f"unknown schedule spec {spec!r}")


app.conf.beat_schedule = {
    name: {
        "task": spec.get("task", "e2e.tick"),
        "schedule": _schedule(spec),
        "args": spec.get("args", []),
        "kwargs": spec.get("kwargs", {}),
        "options": spec.get("options", {}),
    }
    for name, spec in json.loads(os.environ.get("CKB_E2E_SCHEDULE", "{}")).items()
}


@app.task(name="e2e.tick")
def tick(*args: Any, **kwargs: Any) -> None:
    """The task every entry sends by default; the tests read the messages, nothing needs to run it."""
