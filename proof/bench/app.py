"""The Celery app every benchmarked ``celery beat`` runs, whichever scheduler, configured from the environment.

``CKB_BENCH_BROKER`` (Celery broker URL), ``CKB_BENCH_KAFKA``, ``CKB_BENCH_TOPIC``, ``CKB_BENCH_QUEUE``,
``CKB_BENCH_OUT`` (directory for the publish records), ``CKB_BENCH_ENTRIES`` (JSON, see :func:`entries`) and
``CKB_BENCH_CONF`` (JSON of extra settings: ``kafka_beat_*``, ``redbeat_*``, ``beat_max_loop_interval``).

Each scheduler is subclassed only to record, right after a tick's message was handed to the Celery broker, one line
``entry,due_ms,published_ms`` in ``<out>/pub-<pid>.csv`` (written unbuffered, so a SIGKILL loses at most the line
being written). ``due_ms`` is the instant the scheduler meant the tick for: celery-kafka-beat's tick; for stock beat
and RedBeat, the entry's due time from its ``last_run_at`` (``now + schedule.remaining_estimate(last_run_at)``: the
same arithmetic their ``is_due`` uses). A first run, which has no due time, is recorded with an empty ``due_ms``.
Every message also carries the headers ``bench_entry``, ``bench_pid`` (the sending process) and (stock beat,
RedBeat) ``bench_due``, which
the harness's Redis-side recorder reads.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import schedule

from celery_kafka_beat.scheduler import KafkaScheduler

_fd: int | None = None
_fd_pid = 0


def record(entry: str, due_ms: int | None) -> None:
    global _fd, _fd_pid
    published = time.time_ns() // 1_000_000
    if _fd is None or _fd_pid != os.getpid():
        _fd_pid = os.getpid()
        path = os.path.join(os.environ["CKB_BENCH_OUT"], f"pub-{_fd_pid}.csv")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{entry},{'' if due_ms is None else due_ms},{published}\n".encode())


def _due_ms(entry: Any) -> int | None:
    if entry.last_run_at is None:
        return None
    remaining = entry.schedule.remaining_estimate(entry.last_run_at)
    return round(time.time() * 1000 + remaining.total_seconds() * 1000)


def _stamp(entry: Any, due: int | None = None) -> None:
    """Set this process's pid (entries restored from Redis or a shelve carry the pid of the process that saved
    them) and the due time into the message headers."""
    headers = dict(entry.options.get("headers") or {})
    headers["bench_pid"] = str(os.getpid())
    headers["bench_due"] = "" if due is None else str(due)
    entry.options = {**entry.options, "headers": headers}


def _with_due(entry: Any) -> int | None:
    due = _due_ms(entry)
    _stamp(entry, due)
    return due


class KafkaBench(KafkaScheduler):  # type: ignore[misc]
    def _send(self, entry: Any, tick: Any, producer: Any) -> Any:
        _stamp(entry)
        result = super()._send(entry, tick, producer)
        record(tick.entry, tick.tick)
        return result


class StockBench(PersistentScheduler):  # type: ignore[misc]
    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        due = _with_due(entry)
        result = super().apply_async(entry, producer, advance, **kwargs)
        record(entry.name, due)
        return result


RedBeatBench: Any = None
if os.environ.get("CKB_BENCH_SYSTEM") == "redbeat":
    # Imported only for RedBeat runs: importing redbeat connects its lock handler to beat_init for every scheduler.
    from redbeat import RedBeatScheduler

    class RedBeatBench(RedBeatScheduler):  # type: ignore[no-redef,misc]
        def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
            due = _with_due(entry)
            result = super().apply_async(entry, producer, advance, **kwargs)
            record(entry.name, due)
            return result


def entries(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"n": N, "kind": "grid", "period": P}``: N entries every P seconds on Celery's whole-second grid
    (``relative=True``), so that their ticks are comparable between systems and runs. ``{"n": N, "kind": "spread",
    "period": P}``: entry i every ``P * (1 + i / N)`` seconds (not relative): all start together, and their ticks
    spread evenly over time instead of arriving in bursts, about ``N * ln 2 / P`` per second."""
    n, period, kind = int(spec["n"]), float(spec["period"]), spec["kind"]
    out: dict[str, dict[str, Any]] = {}
    pid = str(os.getpid())
    for i in range(n):
        name = f"e{i:06d}"
        if kind == "grid":
            sched = schedule(timedelta(seconds=period), relative=True)
        else:
            sched = schedule(timedelta(milliseconds=round(period * 1000 * (1 + i / n))))
        headers = {"bench_entry": name, "bench_pid": pid}
        out[name] = {"task": "bench.tick", "schedule": sched, "options": {"headers": headers}}
    if spec.get("probe"):
        probe = schedule(timedelta(seconds=float(spec["probe"])))
        out["probe"] = {
            "task": "bench.tick",
            "schedule": probe,
            "options": {"headers": {"bench_entry": "probe", "bench_pid": pid}},
        }
    return out


app = Celery("ckb_bench")
app.conf.update(
    broker_url=os.environ.get("CKB_BENCH_BROKER", "memory://"),
    broker_connection_retry_on_startup=True,
    kafka_beat_bootstrap_servers=os.environ.get("CKB_BENCH_KAFKA", "localhost:9092"),
    kafka_beat_topic=os.environ.get("CKB_BENCH_TOPIC", "ckb-bench"),
    task_default_queue=os.environ.get("CKB_BENCH_QUEUE", "bench"),
)
app.conf.update(json.loads(os.environ.get("CKB_BENCH_CONF", "{}")))
app.conf.beat_schedule = entries(
    json.loads(os.environ.get("CKB_BENCH_ENTRIES", '{"n": 0, "kind": "grid", "period": 1}'))
)
# "bench.tick" is registered nowhere: beat sends it by name and nothing runs it.
