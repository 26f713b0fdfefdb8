"""What every benchmark scenario needs: the services (one Kafka broker, one Redis), beat processes of the three
systems, the Redis-side recorder, the publish records and a few statistics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from kombu import Message

from celery_kafka_beat.testing.devkafka import KafkaCluster
from celery_kafka_beat.testing.devredis import LocalRedis
from proof.chaos.recorder import consume

ROOT = Path(__file__).resolve().parents[2]

#: ``celery beat -S`` class of each system (subclasses that only record; see proof/bench/app.py).
SCHEDULERS: Mapping[str, str] = {
    "kafka": "proof.bench.app:KafkaBench",
    "stock": "proof.bench.app:StockBench",
    "redbeat": "proof.bench.app:RedBeatBench",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Services:
    """One Kafka broker (KRaft, from devkafka) and one redis-server (Celery broker and RedBeat's store)."""

    kafka: str = ""
    redis_url: str = ""
    cluster: KafkaCluster | None = None
    redis: LocalRedis | None = None

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[Services]:
        with LocalRedis() as local_redis, KafkaCluster(nodes=1) as cluster:
            yield cls(cluster.bootstrap_servers, local_redis.url, cluster, local_redis)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@dataclass
class Beat:
    """One ``celery beat`` process."""

    name: str
    system: str
    proc: subprocess.Popen[bytes]
    started: int
    log: Path
    ended: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> int:
        at = now_ms()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)
        return at

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self.ended is None:
            self.ended = now_ms()
        return True

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            if not self.wait(20):
                self.signal(signal.SIGKILL)
                self.wait(10)


@dataclass
class Deployment:
    """The beats of one scenario: their system, settings, entries, topic/queue/keys of their own and a run
    directory for their logs and publish records."""

    services: Services
    system: str
    run_dir: Path
    entries: Mapping[str, Any]
    conf: Mapping[str, Any] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    beats: list[Beat] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def queue(self) -> str:
        return f"bench-{self.tag}"

    @property
    def topic(self) -> str:
        return f"ckb-bench-{self.tag}"

    def _conf(self) -> dict[str, Any]:
        conf = dict(self.conf)
        if self.system == "redbeat":
            conf.setdefault("redbeat_redis_url", self.services.redis_url.rsplit("/", 1)[0] + "/1")
            conf.setdefault("redbeat_key_prefix", f"redbeat-{self.tag}")
        return conf

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            CKB_BENCH_BROKER=self.services.redis_url,
            CKB_BENCH_KAFKA=self.services.kafka,
            CKB_BENCH_TOPIC=self.topic,
            CKB_BENCH_QUEUE=self.queue,
            CKB_BENCH_OUT=str(self.run_dir),
            CKB_BENCH_SYSTEM=self.system,
            CKB_BENCH_ENTRIES=json.dumps(self.entries),
            CKB_BENCH_CONF=json.dumps(self._conf()),
        )
        return env

    def start(self, name: str | None = None) -> Beat:
        name = name or f"{self.system}-{len(self.beats)}"
        log = self.run_dir / f"{name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "bench.app", "beat", "-S", SCHEDULERS[self.system]]
        argv += ["--loglevel", "INFO", "--schedule", str(self.run_dir / f"{self.tag}.schedule")]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=str(ROOT),
                start_new_session=True,
            )
        beat = Beat(name, self.system, proc, now_ms(), log)
        self.beats.append(beat)
        return beat

    def live(self) -> list[Beat]:
        return [b for b in self.beats if b.alive()]

    def stop_all(self) -> None:
        for beat in self.beats:
            if beat.alive():
                beat.signal(signal.SIGTERM)
        for beat in self.beats:
            if not beat.wait(20):
                beat.signal(signal.SIGKILL)
                beat.wait(10)
        with contextlib.suppress(Exception):
            self.services.client().delete(self.queue)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- publish records ------------------------------------------------------------------------------------------

    def publishes(self) -> list[Publish]:
        """Every publish recorded so far by this deployment's beats, by publish time."""
        out: list[Publish] = []
        for path in self.run_dir.glob("pub-*.csv"):
            pid = int(path.stem.split("-", 1)[1])
            for line in path.read_text().splitlines():
                parts = line.split(",")
                if len(parts) != 3 or not parts[2]:
                    continue  # a line cut short by a SIGKILL
                out.append(Publish(pid, parts[0], int(parts[1]) if parts[1] else None, int(parts[2])))
        out.sort(key=lambda p: p.published)
        return out


@dataclass(frozen=True, slots=True)
class Publish:
    pid: int
    entry: str
    due: int | None
    published: int

    @property
    def late(self) -> int | None:
        return None if self.due is None else self.published - self.due


@dataclass(frozen=True, slots=True)
class Received:
    """A task message as Redis delivered it to the recorder."""

    entry: str
    due: int | None
    pid: int
    task_id: str
    received: int


class Recorder:
    """Consumes a deployment's queue from Redis (kombu, as a worker would) and keeps every message's entry, due
    time, sending process and task id: the truth about duplicates and misses."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.received: list[Received] = []
        self.bad: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{queue}", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the recorder could not connect to Redis")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consume(self.broker_url, self.queue, self._on_message, stop=self._stop, ready=self._ready)

    def _on_message(self, body: Any, message: Message) -> None:
        at = now_ms()
        headers = dict(message.headers)
        try:
            if "ckb_tick" in headers:
                due: int | None = round(datetime.fromisoformat(headers["ckb_tick"]).timestamp() * 1000)
            else:
                due = int(headers["bench_due"]) if headers.get("bench_due") else None
            item = Received(headers["bench_entry"], due, int(headers["bench_pid"]), headers["id"], at)
        except (KeyError, ValueError, TypeError) as exc:
            with self._lock:
                self.bad.append(f"{exc!r}: {headers}")
        else:
            with self._lock:
                self.received.append(item)
        message.ack()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Poll ``predicate(received)`` every 20 ms (the recorder runs in a thread of this process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.02)
        return False


class Drainer:
    """Deletes a queue every 0.5 s, for scenarios that only need the publish records (nothing consumes at
    thousands of messages per second in this process without competing with the beats for the CPU)."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client, self.queue = client, queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self.client.delete(self.queue)

    def __enter__(self) -> Drainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- process metrics ------------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# -- statistics -----------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": max(values, default=math.nan)}
