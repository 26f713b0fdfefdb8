"""A stand-alone node process for multi-process tests and demos: dispatches by appending JSON lines to a file.

``python -m proof.nodeproc --bootstrap B --topic T --node NAME --entries a=1000,b=500
--out dispatches.jsonl`` runs one :class:`~celery_kafka_beat.runtime.kafka.KafkaNode` whose entries are fixed
intervals (name=period in ms). Every dispatch appends ``{"entry", "tick", "node", "session", "epoch", "resend",
"wall_ms"}`` to ``--out`` and flushes. The process prints ``READY`` on stdout once its first session is live, keeps
``--status-file`` (if given) up to date with its session and owned entries, and on SIGTERM or SIGINT stops
cleanly (goodbye read back) and exits 0; it exits 2 if the node failed (a refused topic, say).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from celery_kafka_beat.protocol import CatchUp, DeliveryMode, Dispatch, NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime.kafka import KafkaNode, NodeStatus, monotonic_ms

__all__ = ["main", "parse_entries"]

# Why 50 ms: how often the main thread refreshes the status file and notices READY; cheap, and fine-grained
# enough for tests that wait on ownership changes.
_STATUS_INTERVAL_S = 0.05


def parse_entries(text: str) -> dict[str, int]:
    """``"a=1000,b=500"`` -> ``{"a": 1000, "b": 500}``."""
    periods: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, period = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"entry {item!r} must look like name=period_ms")
        try:
            periods[name] = int(period)
        except ValueError:
            raise argparse.ArgumentTypeError(f"period of entry {name!r} must be an integer (ms)") from None
    if not periods:
        raise argparse.ArgumentTypeError("no entries given")
    return periods


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proof.nodeproc", description=__doc__)
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--topic", required=True, help="the sync topic")
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--entries", required=True, type=parse_entries, help="name=period_ms,...")
    p.add_argument("--out", required=True, type=Path, help="file to append one JSON line per dispatch to")
    p.add_argument("--lease-ms", type=int, default=3000)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--decision-lead-ms", type=int, default=None)
    p.add_argument("--delivery", choices=[m.value for m in DeliveryMode], default=DeliveryMode.AT_MOST_ONCE.value)
    p.add_argument("--catchup", choices=[c.value for c in CatchUp], default=CatchUp.ONCE.value)
    p.add_argument("--snapshot-records", type=int, default=None)
    p.add_argument("--probation-ms", type=int, default=None, help="how long a new session waits before taking entries")
    p.add_argument("--status-file", type=Path, default=None, help="JSON status, rewritten atomically")
    p.add_argument(
        "--clock-offset-ms",
        type=int,
        default=0,
        help="simulate clocks that are off: added to the node's monotonic clock and to the wall clock it reports",
    )
    p.add_argument("--stop-timeout", type=float, default=10.0, help="seconds a clean stop may take")
    p.add_argument("--log-level", default="INFO")
    return p


def _settings(args: argparse.Namespace) -> NodeSettings:
    settings = NodeSettings(
        node=args.node,
        lease_ms=args.lease_ms,
        heartbeat_ms=args.heartbeat_ms,
        delivery=DeliveryMode(args.delivery),
        catchup=CatchUp(args.catchup),
    )
    if args.decision_lead_ms is not None:
        settings = dataclasses.replace(settings, decision_lead_ms=args.decision_lead_ms)
    if args.snapshot_records is not None:
        settings = dataclasses.replace(settings, snapshot_records=args.snapshot_records)
    if args.probation_ms is not None:
        settings = dataclasses.replace(settings, probation_ms=args.probation_ms)
    return settings


def _write_status(path: Path, status: NodeStatus) -> None:
    body = {
        "node": status.node,
        "pid": os.getpid(),
        "session": status.session,
        "live": status.live,
        "owned": sorted(status.owned),
        "offset": status.offset,
        "running": status.running,
        "error": status.error,
        "wall_ms": int(time.time() * 1000),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _Recorder:
    """The dispatch callback: one flushed JSON line per tick."""

    def __init__(self, out: IO[str], node: str, clock_offset_ms: int = 0) -> None:
        self._out = out
        self._node = node
        self._offset = clock_offset_ms

    def __call__(self, d: Dispatch) -> None:
        line = {
            "entry": d.entry,
            "tick": d.tick,
            "node": self._node,
            "session": d.session,
            "epoch": d.epoch,
            "resend": d.resend,
            "wall_ms": int(time.time() * 1000) + self._offset,
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node} %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A repeated SIGTERM must not kill a process that is already stopping: CPython restores the default
        # handlers while it shuts down, so a second signal then would turn a clean exit into death by signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    offset = args.clock_offset_ms
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        node = KafkaNode(
            args.bootstrap,
            args.topic,
            _settings(args),
            args.entries,
            IntervalSchedule(args.entries),
            _Recorder(out, args.node, offset),
            clock=(lambda: monotonic_ms() + offset) if offset else monotonic_ms,
        )
        node.start()
        ready = False
        while not stop.wait(_STATUS_INTERVAL_S):
            status = node.status
            if args.status_file is not None:
                _write_status(args.status_file, status)
            if status.live and not ready:
                ready = True
                print("READY", flush=True)
            if not status.running:
                break
        clean = node.stop(args.stop_timeout)
        status = node.status
        if args.status_file is not None:
            _write_status(args.status_file, status)
        if status.error is not None:
            print(f"node failed: {status.error}", file=sys.stderr, flush=True)
            return 2
        logging.getLogger(__name__).info("stopped %s", "cleanly" if clean else "without a goodbye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
