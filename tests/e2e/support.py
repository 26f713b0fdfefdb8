"""Helpers for the end-to-end tests: real ``celery beat`` / ``celery worker`` processes running
``tests/e2e/celeryapp.py``, and a recorder that consumes every task message they publish from the real Celery broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kombu import Message

import celery_kafka_beat
from proof.chaos.recorder import consume

PACKAGE_PARENT = Path(celery_kafka_beat.__file__).resolve().parent.parent
APP = "tests.e2e.celeryapp"


def iso_ms(value: str) -> int:
    return round(datetime.fromisoformat(value).timestamp() * 1000)


@dataclass(frozen=True)
class Received:
    """One task message as the Celery broker delivered it."""

    task_id: str
    task: str
    entry: str
    tick: int
    node: str
    epoch: int
    received: float
    """time.time() when the recorder got it."""
    headers: Mapping[str, Any]
    body: Any = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lateness_ms(self) -> float:
        return self.received * 1000 - self.tick


class Recorder:
    """Consumes the tick queue in a thread and keeps every message received (acknowledged, nothing runs)."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.reconnects: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the recorder could not connect to the Celery broker")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consume(
            self.broker_url, self.queue, self._on_message, stop=self._stop, ready=self._ready, on_error=self._on_error
        )

    def _on_error(self, exc: Exception) -> None:
        with self._cond:
            self.reconnects.append(repr(exc)[:200])

    def _on_message(self, body: Any, message: Message) -> None:
        headers = dict(message.headers)
        try:
            item = Received(
                task_id=headers["id"],
                task=headers["task"],
                entry=headers["ckb_entry"],
                tick=iso_ms(headers["ckb_tick"]),
                node=headers["ckb_node"],
                epoch=int(headers["ckb_epoch"]),
                received=time.time(),
                headers=headers,
                body=body,
                properties=dict(message.properties),
            )
        except (KeyError, ValueError) as exc:
            with self._cond:
                self.errors.append(f"message without tick headers ({exc!r}): {headers}")
                self._cond.notify_all()
        else:
            with self._cond:
                self.received.append(item)
                self._cond.notify_all()
        message.ack()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.received)

    def wait(self, predicate: Callable[[list[Received]], bool], timeout: float, what: str) -> list[Received]:
        """Wait until ``predicate(received so far)`` holds (woken by each message); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:.0f} s waiting for {what}; received {len(self.received)}"
                    )
                self._cond.wait(min(left, 0.5))
            return list(self.received)


def missing_ticks(received: Iterable[Received], entries: Iterable[str], until_ms: int) -> dict[str, list[int]]:
    """Per entry, the ticks of its 1 s series (from its first tick received up to ``until_ms``) not received."""
    ticks: dict[str, set[int]] = {}
    for r in received:
        ticks.setdefault(r.entry, set()).add(r.tick)
    missing: dict[str, list[int]] = {}
    for entry in entries:
        mine = ticks.get(entry)
        gaps = sorted(set(range(min(mine), until_ms + 1, 1000)) - mine) if mine else [until_ms]
        if gaps:
            missing[entry] = gaps
    return missing


def wait_complete(recorder: Recorder, entries: list[str], until_ms: int, timeout: float = 15.0) -> list[Received]:
    """Wait until every entry's series is complete up to ``until_ms`` (a tick re-sent after a failure may arrive
    after later ones); then return what was received. On timeout return it anyway: the caller's assertions say
    what is missing."""
    try:
        return recorder.wait(lambda rs: not missing_ticks(rs, entries, until_ms), timeout, "every tick")
    except AssertionError:
        return recorder.snapshot()


def duplicates(received: Iterable[Received]) -> dict[tuple[str, int], int]:
    counts = Counter((r.entry, r.tick) for r in received)
    return {key: n for key, n in counts.items() if n > 1}


@dataclass
class CeleryProc:
    """One ``celery -A tests.e2e.celeryapp <command>`` process with its environment and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _offset: int = field(default=0)

    def start(self) -> CeleryProc:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=str(PACKAGE_PARENT),
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        """The log written by this run of the process."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> None:
        """Wait until the process logged ``needle``; fail if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {needle!r}:\n" + self.text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {needle!r} in {timeout:.0f} s:\n" + self.text()[-4000:])
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal the process and all its children (a worker and its embedded beat)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


@dataclass
class Deployment:
    """Everything the processes of one test share: brokers, topic, queue, schedule and settings."""

    kafka: str
    broker: str
    topic: str
    workdir: Path
    schedule: Mapping[str, Mapping[str, Any]]
    conf: Mapping[str, Any] = field(default_factory=dict)
    queue: str = field(default_factory=lambda: f"ticks-{uuid.uuid4().hex[:12]}")
    procs: list[CeleryProc] = field(default_factory=list)

    def env(self, node: str | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(PACKAGE_PARENT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            CKB_E2E_BROKER=self.broker,
            CKB_E2E_KAFKA=self.kafka,
            CKB_E2E_TOPIC=self.topic,
            CKB_E2E_QUEUE=self.queue,
            CKB_E2E_SCHEDULE=json.dumps(self.schedule),
            CKB_E2E_CONF=json.dumps(self.conf),
        )
        if node is not None:
            env["CKB_E2E_NODE"] = node
        env.update(extra)
        return env

    def _celery(self, name: str, *args: str) -> CeleryProc:
        argv = [sys.executable, "-m", "celery", "-A", APP, *args, "--loglevel", "INFO"]
        argv += ["--schedule", str(self.workdir / f"{name}.schedule")]  # unused by KafkaScheduler
        proc = CeleryProc(name, argv, self.env(name), self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc.start()

    def beat(self, name: str, scheduler: str = "kafka") -> CeleryProc:
        return self._celery(name, "beat", "-S", scheduler)

    def worker_with_beat(self, name: str) -> CeleryProc:
        """``celery worker -B --scheduler kafka`` consuming another queue than the ticks' (the recorder reads those).
        (The worker's ``-S`` is ``--statedb``, not the scheduler.)"""
        return self._celery(
            name,
            "worker",
            "-B",
            "--scheduler",
            "kafka",
            "--pool",
            "solo",
            "-Q",
            f"{self.queue}-work",
            "-n",
            f"{name}@%h",
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
