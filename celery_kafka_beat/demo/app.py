"""The demo's Celery app: an ordinary ``beat_schedule``, run by ``celery beat -S kafka`` on three replicas.

``python -m celery_kafka_beat.demo`` starts everything; to run the parts yourself::

    export DEMO_KAFKA=127.0.0.1:9092 DEMO_BROKER_URL=redis://127.0.0.1:6379/0
    celery -A celery_kafka_beat.demo.app beat -S kafka          # on as many replicas as you like
    celery -A celery_kafka_beat.demo.app worker --pool solo     # executes the tasks

The only lines a stock-beat project adds are the two ``kafka_beat_*`` settings (and ``-S kafka``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

app = Celery("demo")
app.conf.update(
    broker_url=os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    task_default_queue="demo",
    # The two settings KafkaScheduler needs; everything else has a default (docs/configuration.md).
    kafka_beat_bootstrap_servers=os.environ.get("DEMO_KAFKA", "127.0.0.1:9092"),
    kafka_beat_topic=os.environ.get("DEMO_TOPIC", "ckb-demo"),
    # Ticks that fall due while an owner is dead run late (once each) instead of being skipped.
    kafka_beat_catchup="all",
)
if os.environ.get("DEMO_NODE"):
    app.conf.kafka_beat_node_name = os.environ["DEMO_NODE"]

app.conf.beat_schedule = {
    "send-metrics": {"task": "celery_kafka_beat.demo.app.work", "schedule": 1.0, "args": ["send-metrics"]},
    "poll-inbox": {"task": "celery_kafka_beat.demo.app.work", "schedule": 1.0, "args": ["poll-inbox"]},
    "refresh-cache": {"task": "celery_kafka_beat.demo.app.work", "schedule": 2.0, "args": ["refresh-cache"]},
    "sync-orders": {"task": "celery_kafka_beat.demo.app.work", "schedule": 2.0, "args": ["sync-orders"]},
    "rotate-keys": {"task": "celery_kafka_beat.demo.app.work", "schedule": 3.0, "args": ["rotate-keys"]},
    "cleanup": {
        "task": "celery_kafka_beat.demo.app.work",
        "schedule": 5.0,
        "args": ["cleanup"],
        "options": {"expires": 60},
    },
}


@app.task(bind=True)  # type: ignore[untyped-decorator]  # Celery is untyped
def work(self: Any, label: str) -> None:
    """Stands in for real work: records which replica dispatched which tick (from the message's headers)."""
    request = self.request
    line = {
        "entry": getattr(request, "ckb_entry", label),
        "tick": getattr(request, "ckb_tick", None),
        "node": getattr(request, "ckb_node", None),
        "epoch": getattr(request, "ckb_epoch", None),
        "task_id": request.id,
        "received": time.time(),
    }
    out = os.environ.get("DEMO_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
