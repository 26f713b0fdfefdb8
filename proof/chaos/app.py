"""The Celery app the chaos harness runs in its ``celery beat`` replicas, configured from the environment.

``CKB_CHAOS_BROKER`` (Celery broker URL), ``CKB_CHAOS_KAFKA`` (bootstrap servers: the replica's own proxies),
``CKB_CHAOS_TOPIC``, ``CKB_CHAOS_QUEUE``, ``CKB_CHAOS_SCHEDULE`` (JSON ``{entry: {"every": seconds}}``) and
``CKB_CHAOS_CONF`` (JSON of extra settings), and ``CKB_CHAOS_CONSUMER_KAFKA``: the bootstrap servers of the
replica's consumer alone (its other proxies), so that the harness can cut its reads but not its writes. Replicas run
``celery beat -S proof.chaos.app:ChaosScheduler``, which passes them on as the consumer's
``bootstrap.servers`` (:attr:`KafkaScheduler.node_options`).

``CKB_CHAOS_CLOCK_OFFSET_S`` (test only) moves this process's clocks by that many seconds: ``time.time``,
``time.time_ns``, ``time.clock_gettime[_ns]`` (every clock id, the lease clock included: a constant offset changes
no interval) and Celery's ``app.now()``. ``datetime.now()`` (C code) and librdkafka's own clock are not moved:
libfaketime, which would move them, makes librdkafka hang in ``Consumer.close`` on this machine. No decision of the
scheduler reads a wall clock (due times come from broker LogAppendTime, leases from the boot-time clock), so the
fault checks that this stays true rather than exercising a clock-dependent path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import schedule

from celery_kafka_beat.scheduler import KafkaScheduler


def _shift_clocks(offset_s: float) -> None:
    real_time, real_time_ns = time.time, time.time_ns
    real_gettime, real_gettime_ns = time.clock_gettime, time.clock_gettime_ns
    offset_ns = round(offset_s * 1e9)
    time.time = lambda: real_time() + offset_s
    time.time_ns = lambda: real_time_ns() + offset_ns
    time.clock_gettime = lambda clock: real_gettime(clock) + offset_s
    time.clock_gettime_ns = lambda clock: real_gettime_ns(clock) + offset_ns


if os.environ.get("CKB_CHAOS_CLOCK_OFFSET_S"):
    _shift_clocks(float(os.environ["CKB_CHAOS_CLOCK_OFFSET_S"]))

app = Celery("ckb_chaos")
app.conf.update(
    broker_url=os.environ["CKB_CHAOS_BROKER"],
    broker_connection_retry_on_startup=True,
    kafka_beat_bootstrap_servers=os.environ["CKB_CHAOS_KAFKA"],
    kafka_beat_topic=os.environ["CKB_CHAOS_TOPIC"],
    task_default_queue=os.environ["CKB_CHAOS_QUEUE"],
)
app.conf.update(json.loads(os.environ.get("CKB_CHAOS_CONF", "{}")))
if os.environ.get("CKB_CHAOS_CLOCK_OFFSET_S"):
    _real_now, _skew = app.now, timedelta(seconds=float(os.environ["CKB_CHAOS_CLOCK_OFFSET_S"]))
    app.now = lambda: _real_now() + _skew
app.conf.beat_schedule = {
    name: {"task": "chaos.tick", "schedule": schedule(timedelta(seconds=spec["every"]))}
    for name, spec in json.loads(os.environ.get("CKB_CHAOS_SCHEDULE", "{}")).items()
}  # "chaos.tick" is registered nowhere: beat sends it by name, the recorder reads it, nothing runs it


def _node_options() -> dict[str, Any]:
    consumer = os.environ.get("CKB_CHAOS_CONSUMER_KAFKA")
    return {"consumer_config": {"bootstrap.servers": consumer}} if consumer else {}


class ChaosScheduler(KafkaScheduler):
    """:class:`KafkaScheduler` whose consumer reaches Kafka through its own proxies (``CKB_CHAOS_CONSUMER_KAFKA``)."""

    node_options: Mapping[str, Any] = _node_options()
