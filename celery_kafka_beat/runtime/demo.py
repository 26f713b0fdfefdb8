"""The demo: a local Kafka, three replicas sharing entries, the owner of one killed part-way, and a summary.

``python -m celery_kafka_beat.runtime.demo [--seconds 30] [--kill-after 12]`` starts a 1-node Kafka (devkafka),
three node processes (``runtime.nodeproc``) with six entries ticking every second, shows every dispatch live
(which node dispatched which tick, and under which claim epoch), SIGKILLs the owner of ``e0`` part-way, and prints
the failover time and a summary: ticks expected, received, duplicates, missed (and whether the catch-up policy
allowed them). Everything it started is stopped on exit or Ctrl-C. Until the Celery scheduler lands, nodes
"dispatch" by writing a line to a file instead of publishing a Celery task.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from celery_kafka_beat.devkafka import KafkaCluster

ENTRIES = {f"e{i}": 1000 for i in range(6)}
NODES = ("alpha", "bravo", "charlie")
# Why: the defaults a user gets (lease 3 s, heartbeat 1 s), so the failover shown is the default one.
LEASE_MS, HEARTBEAT_MS = 3000, 1000


def _fmt(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the replicas run")
    parser.add_argument("--kill-after", type=float, default=12.0, help="when the owner of e0 is SIGKILLed")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ckb-demo-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    print("starting a local Apache Kafka (first run downloads it from Maven Central) ...", flush=True)
    with KafkaCluster(nodes=1) as cluster:
        print(f"kafka up at {cluster.bootstrap_servers}", flush=True)
        entries = ",".join(f"{name}={period}" for name, period in ENTRIES.items())
        for name in NODES:
            out = workdir / f"{name}.jsonl"
            out.touch()
            procs[name] = subprocess.Popen(
                [
                    sys.executable, "-m", "celery_kafka_beat.runtime.nodeproc",
                    "--bootstrap", cluster.bootstrap_servers, "--topic", "ckb-demo", "--node", name,
                    "--entries", entries, "--out", str(out), "--lease-ms", str(LEASE_MS),
                    "--heartbeat-ms", str(HEARTBEAT_MS), "--log-level", "WARNING",
                ],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            return _watch(workdir, procs, args.seconds, args.kill_after)
        except KeyboardInterrupt:
            print("\ninterrupted", flush=True)
            return 130
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _watch(workdir: Path, procs: dict[str, subprocess.Popen[bytes]], seconds: float, kill_after: float) -> int:
    offsets = dict.fromkeys(procs, 0)
    seen: dict[tuple[str, int], list[dict[str, object]]] = {}
    started = time.monotonic()
    killed: tuple[str, float] | None = None
    kill_wall_ms: int | None = None
    failover_ms: float | None = None
    while time.monotonic() - started < seconds:
        for name in procs:
            path = workdir / f"{name}.jsonl"
            with path.open("rb") as f:
                f.seek(offsets[name])
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            offsets[name] += len(complete)
            for line in complete.splitlines():
                event = json.loads(line)
                key = (str(event["entry"]), int(event["tick"]))
                seen.setdefault(key, []).append(event)
                mark = "  DUPLICATE" if len(seen[key]) > 1 else ""
                print(f"{_fmt(key[1])}  {key[0]}  -> {event['node']:<8} epoch {event['epoch']}{mark}", flush=True)
                if killed and event["entry"] == "e0" and event["node"] != killed[0] and failover_ms is None:
                    failover_ms = (time.monotonic() - killed[1]) * 1000
                    print(f"*** failover: e0 dispatched by {event['node']} {failover_ms:.0f} ms after the kill")
        if killed is None and time.monotonic() - started > kill_after:
            owner = next((str(e[-1]["node"]) for k, e in sorted(seen.items(), reverse=True) if k[0] == "e0"), None)
            if owner is not None:
                procs[owner].kill()
                killed = (owner, time.monotonic())
                kill_wall_ms = int(time.time() * 1000)
                print(f"*** SIGKILL {owner} (pid {procs[owner].pid}), the owner of e0", flush=True)
        time.sleep(0.05)  # polling files the nodes append to; nothing to await in between
    return _summary(seen, kill_wall_ms, failover_ms)


def _summary(
    seen: dict[tuple[str, int], list[dict[str, object]]], kill_wall_ms: int | None, failover_ms: float | None
) -> int:
    duplicates = sum(1 for events in seen.values() if len(events) > 1)
    missed = allowed = 0
    for entry, period in ENTRIES.items():
        ticks = sorted(t for e, t in seen if e == entry)
        for a, b in itertools.pairwise(ticks):
            gap = (b - a) // period - 1
            missed += gap
            # Catch-up "once": ticks that fell due while the killed owner's lease ran out collapse into one run.
            in_failover = kill_wall_ms is not None and kill_wall_ms - period <= a <= kill_wall_ms + 2 * LEASE_MS
            allowed += gap if in_failover else 0
    expected = sum(len([t for e, t in seen if e == entry]) for entry in ENTRIES) + missed
    print("\nsummary")
    print(f"  ticks expected (first to last seen, per entry): {expected}")
    print(f"  ticks received: {len(seen)}")
    print(f"  duplicates: {duplicates}")
    print(f"  missed: {missed} (allowed by catch-up policy 'once' during the failover: {allowed})")
    if failover_ms is not None:
        print(f"  failover after SIGKILL: {failover_ms:.0f} ms (lease {LEASE_MS} ms, heartbeat {HEARTBEAT_MS} ms)")
    return 1 if duplicates or missed > allowed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
    os._exit(1)
