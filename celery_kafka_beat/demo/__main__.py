"""The demo: three ``celery beat -S kafka`` replicas share one schedule, one owner is killed, nothing is lost.

``python -m celery_kafka_beat.demo [--seconds 40] [--kill-after 15]`` (from an installed package or a checkout) starts
a local Apache Kafka (``celery_kafka_beat.testing.devkafka``; needs Java 17+ and Maven) and a local Redis (the Celery
broker; needs ``redis-server``), three beat replicas and a Celery worker running the demo's app
(``celery_kafka_beat/demo/app.py``, shipped with the package), and shows live which replica dispatched which tick
as the worker runs it. Part-way it SIGKILLs the replica that owns ``send-metrics`` and shows how long the others took
to take over. At the end it prints a summary: ticks expected, received, duplicates, missed. Everything it started
is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from celery_kafka_beat.testing.devkafka import KafkaCluster
from celery_kafka_beat.testing.devredis import LocalRedis, RedisUnavailable

#: The directory holding the ``celery_kafka_beat`` package (a checkout, or site-packages): on the replicas' path.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
APP = "celery_kafka_beat.demo.app"
NODES = ("alpha", "bravo", "charlie")
VICTIM_ENTRY = "send-metrics"
#: Periods of the demo app's entries (celery_kafka_beat/demo/app.py), in seconds.
PERIODS = {"send-metrics": 1, "poll-inbox": 1, "refresh-cache": 2, "sync-orders": 2, "rotate-keys": 3, "cleanup": 5}


def _hms(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s).strftime("%H:%M:%S.%f")[:-3]


class Demo:
    def __init__(self, workdir: Path, kafka: str, redis: str) -> None:
        self.workdir = workdir
        self.out = workdir / "ticks.jsonl"
        self.out.touch()
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=str(PACKAGE_PARENT) + os.pathsep + self.env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            DEMO_KAFKA=kafka,
            DEMO_BROKER_URL=redis,
            DEMO_TOPIC=f"ckb-demo-{int(time.time())}",
            DEMO_OUT=str(self.out),
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ticks: list[dict[str, Any]] = []
        self._read = 0

    def start(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP, *args],
            env={**self.env, "DEMO_NODE": name},
            cwd=str(self.workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches the demo only; it stops them cleanly
        )

    def new_ticks(self) -> Iterator[dict[str, Any]]:
        with self.out.open() as f:
            f.seek(self._read)
            for line in f:
                if not line.endswith("\n"):
                    break
                self._read += len(line.encode())
                tick = json.loads(line)
                tick["tick_s"] = datetime.fromisoformat(tick["tick"]).timestamp()
                self.ticks.append(tick)
                yield tick

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _show(tick: dict[str, Any]) -> None:
    late = (tick["received"] - tick["tick_s"]) * 1000
    print(
        f"  {_hms(tick['received'])}  {tick['entry']:<14} tick {_hms(tick['tick_s'])}  by {tick['node']:<8}"
        f" claim {tick['epoch']:<4} ran {late:+6.0f} ms after its time",
        flush=True,
    )


def summary(ticks: list[dict[str, Any]], cutoff: float) -> tuple[int, int, int, int]:
    """(expected, received, duplicates, missed) over the ticks up to ``cutoff``, per entry from its first tick."""
    expected = received = dups = missed = 0
    for entry, period in PERIODS.items():
        mine = sorted(t["tick_s"] for t in ticks if t["entry"] == entry and t["tick_s"] <= cutoff)
        if not mine:
            continue
        counts = Counter(round(t * 1000) for t in mine)
        series = {round((mine[0] + k * period) * 1000) for k in range(int((cutoff - mine[0]) // period) + 1)}
        expected += len(series)
        received += len(mine)
        dups += sum(n - 1 for n in counts.values())
        missed += len(series - set(counts))
        print(
            f"  {entry:<14} every {period} s: expected {len(series):3}  received {len(mine):3}  "
            f"duplicates {sum(n - 1 for n in counts.values())}  missed {len(series - set(counts))}"
        )
    return expected, received, dups, missed


def run(seconds: float, kill_after: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ckb-demo-"))
    print("starting a local Apache Kafka (the first run downloads it from Maven Central) and Redis ...", flush=True)
    with KafkaCluster(nodes=1) as cluster, LocalRedis() as redis:
        print(f"kafka at {cluster.bootstrap_servers}, redis at {redis.url}; logs in {workdir}", flush=True)
        demo = Demo(workdir, cluster.bootstrap_servers, redis.url)
        try:
            return _run(demo, seconds, kill_after)
        finally:
            demo.stop_all()


def _run(demo: Demo, seconds: float, kill_after: float) -> int:
    demo.start("worker", "worker", "--pool", "solo", "--loglevel", "WARNING", "-n", "demo-worker@%h")
    for name in NODES:
        demo.start(name, "beat", "-S", "kafka", "--loglevel", "INFO", "-s", str(demo.workdir / f"{name}.schedule"))
    print(f"three beat replicas ({', '.join(NODES)}) and a worker started; every tick the worker runs:", flush=True)
    print(
        "  (claim N: the entry's claim epoch, which goes up each time a replica takes the entry over; a tick sent\n"
        "   under an older claim than the entry's current one is fenced and never published)",
        flush=True,
    )
    started = time.time()
    killed_at: float | None = None
    victim: str | None = None
    failover: float | None = None
    while time.time() - started < seconds:
        for tick in demo.new_ticks():
            _show(tick)
            if killed_at is not None and failover is None and tick["entry"] == VICTIM_ENTRY and tick["node"] != victim:
                failover = tick["received"] - killed_at
                print(f"== {tick['node']} took {VICTIM_ENTRY} over {failover:.2f} s after the kill", flush=True)
        if killed_at is None and time.time() - started >= kill_after:
            owners = [t["node"] for t in demo.ticks if t["entry"] == VICTIM_ENTRY]
            if owners:
                victim = owners[-1]
                demo.procs[victim].send_signal(signal.SIGKILL)
                killed_at = time.time()
                print(f"== SIGKILL {victim}, the owner of {VICTIM_ENTRY}, at {_hms(killed_at)}", flush=True)
        for name, proc in demo.procs.items():
            if proc.poll() is not None and name != victim:
                print(f"!! {name} exited with {proc.returncode}; see {demo.workdir / (name + '.log')}")
                return 1
        time.sleep(0.1)
    cutoff = time.time() - 2.5  # ticks due before this have had time to run
    time.sleep(1.0)
    list(demo.new_ticks())
    print("\nsummary (catch-up 'all', delivery at-least-once):")
    expected, received, dups, missed = summary(demo.ticks, cutoff)
    print(f"  total: expected {expected}, received {received}, duplicates {dups}, missed {missed}")
    if failover is not None:
        print(f"  failover after SIGKILL of {victim}: {failover:.2f} s (lease 3 s)")
    nodes = Counter(t["node"] for t in demo.ticks if t["tick_s"] <= cutoff)  # the same ticks as the totals
    print("  dispatched per replica: " + ", ".join(f"{n} {c}" for n, c in sorted(nodes.items())))
    ok = expected > 0 and dups == 0 and missed == 0 and failover is not None
    print("OK: every tick ran exactly once" if ok else "NOT OK: see above")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m celery_kafka_beat.demo", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the replicas run (default 40)")
    parser.add_argument("--kill-after", type=float, default=15.0, help="when the owner is SIGKILLed (default 15)")
    args = parser.parse_args(argv)
    try:
        return run(args.seconds, args.kill_after)
    except RedisUnavailable as exc:
        print(f"cannot start Redis (the demo's Celery broker): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
