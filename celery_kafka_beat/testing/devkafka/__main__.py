"""Command line: ``python -m celery_kafka_beat.testing.devkafka {fetch,start,stop,status}``.

``start`` leaves the brokers running in the background and records them in ``<devkafka home>/cluster.json``;
``stop`` and ``status`` read that file. The bootstrap servers are the last line ``start`` prints on stdout
(everything else goes to stderr), so ``export CKB_KAFKA_BOOTSTRAP=$(... start)`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .assembly import DEFAULT_KAFKA_VERSION, DevKafkaError, assemble, devkafka_home
from .cluster import DEFAULT_HEAP, DEFAULT_START_TIMEOUT_S, DEFAULT_STOP_TIMEOUT_S, KafkaCluster

STATE_FILE = "cluster.json"
# Why 0.5 s: the foreground monitor only reports a broker that died; sub-second latency is plenty.
_MONITOR_INTERVAL_S = 0.5
# Why 0.1 s: how often `stop` checks whether a (non-child) broker process has exited.
_STOP_POLL_S = 0.1
# Why 5 s: a healthy local broker answers metadata in milliseconds; `status` should not hang.
_STATUS_METADATA_TIMEOUT_S = 5.0


def _state_path() -> Path:
    return devkafka_home() / STATE_FILE


def _load_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DevKafkaError(f"unreadable state file {_state_path()}: {exc}; delete it") from exc
    return state


def _write_state(state: dict[str, Any]) -> None:
    path = _state_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _pid_is_broker(pid: int | None, props: str) -> bool:
    """True when ``pid`` is alive and still the broker started with ``props`` (guards against pid reuse)."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
    return not zombie and props.encode() in cmdline


def _live_brokers(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in state.get("brokers", []) if _pid_is_broker(b.get("pid"), b.get("properties", ""))]


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cmd_fetch(args: argparse.Namespace) -> int:
    dist = assemble(args.version)
    print(dist.libs)
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    state = _load_state()
    if state is not None and _live_brokers(state):
        raise DevKafkaError(
            f"a devkafka cluster is already running at {state.get('bootstrap')} "
            f"(state {_state_path()}); run `python -m celery_kafka_beat.testing.devkafka stop` first"
        )
    cluster = KafkaCluster(
        nodes=args.nodes,
        version=args.version,
        heap=args.heap,
        start_timeout=args.timeout,
        detach=not args.foreground,
    )
    cluster.start()  # logs "ready in ... s" with the workdir
    _write_state({**cluster.describe(), "foreground": args.foreground, "cli_pid": os.getpid()})
    bootstrap = cluster.bootstrap_servers
    err = sys.stderr
    print(f"export CKB_KAFKA_BOOTSTRAP={bootstrap}", file=err)
    if args.foreground:
        print("running in the foreground; Ctrl-C stops the cluster", file=err)
    print(bootstrap, flush=True)
    if not args.foreground:
        return 0
    return _run_foreground(cluster)


def _run_foreground(cluster: KafkaCluster) -> int:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: SIGTERM (e.g. from a supervisor) should stop cleanly too, and a shell may have
    # started us with SIGINT ignored (background job), which would otherwise make Ctrl-C/kill -INT a no-op.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    reported: set[int] = set()
    try:
        while True:
            dead = {i for i in range(cluster.nodes) if not cluster.is_running(i)}
            for i in sorted(dead - reported):
                print(f"broker {i} exited; see {cluster.log_path(i)}", file=sys.stderr)
            reported = dead
            if len(dead) == cluster.nodes:
                return 1
            time.sleep(_MONITOR_INTERVAL_S)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        return 0
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state = _load_state()
        if state is not None and state.get("cli_pid") == os.getpid():
            _state_path().unlink(missing_ok=True)


def _cmd_stop(args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("no devkafka cluster recorded; nothing to stop", file=sys.stderr)
        return 0
    live = _live_brokers(state)
    for broker in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker["pid"], signal.SIGCONT)  # a paused broker would not act on SIGTERM
            os.kill(broker["pid"], signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while live and time.monotonic() < deadline:
        live = _live_brokers(state)
        if live:
            time.sleep(_STOP_POLL_S)
    for broker in live:
        print(f"broker {broker['index']} did not stop in {args.timeout:.0f} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker["pid"], signal.SIGKILL)
    if state.get("owns_workdir") and state.get("workdir"):
        shutil.rmtree(state["workdir"], ignore_errors=True)
    _state_path().unlink(missing_ok=True)
    print(f"stopped the cluster at {state.get('bootstrap')}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("no devkafka cluster running")
        return 1
    live = {b["index"] for b in _live_brokers(state)}
    print(f"Kafka {state['version']}, {state['nodes']} node(s), workdir {state['workdir']}")
    for broker in state["brokers"]:
        up = broker["index"] in live
        rss = f", RSS {_rss_mb(broker['pid']):.0f} MB" if up else ""
        print(
            f"  broker {broker['index']}: pid {broker['pid']} {'running' if up else 'NOT RUNNING'}, "
            f"port {broker['port']}{rss}, log {broker['log']}"
        )
    listed: list[int] = []
    if live:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - only status talks to the broker

        admin = AdminClient({"bootstrap.servers": state["bootstrap"], "log_level": 0})
        with contextlib.suppress(Exception):
            listed = sorted(admin.list_topics(timeout=_STATUS_METADATA_TIMEOUT_S).brokers)
    print(f"  brokers listed in metadata: {listed}")
    print(state["bootstrap"])
    return 0 if len(live) == state["nodes"] and len(listed) == state["nodes"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m celery_kafka_beat.testing.devkafka",
        description="Assemble Apache Kafka from Maven Central and run a local KRaft cluster.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show details (log tails) on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="download/assemble Kafka jars into the cache; print their folder")
    fetch.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Kafka version (default %(default)s)")
    fetch.set_defaults(func=_cmd_fetch)

    start = sub.add_parser("start", help="start a cluster in the background; print its bootstrap servers")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Kafka version (default %(default)s)")
    start.add_argument("--heap", default=DEFAULT_HEAP, help="JVM heap per broker (default %(default)s)")
    start.add_argument(
        "--timeout", type=float, default=DEFAULT_START_TIMEOUT_S, help="start timeout in s (%(default)s)"
    )
    start.add_argument("--foreground", action="store_true", help="run until Ctrl-C, then stop cleanly")
    start.set_defaults(func=_cmd_start)

    stop = sub.add_parser("stop", help="stop the cluster recorded by start")
    stop.add_argument(
        "--timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S, help="SIGKILL after this many s (%(default)s)"
    )
    stop.set_defaults(func=_cmd_stop)

    status = sub.add_parser("status", help="show the recorded cluster; exit code 0 when fully up")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``celery-kafka-beat-devkafka``); returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="devkafka: %(message)s", stream=sys.stderr)
    try:
        code: int = args.func(args)
    except DevKafkaError as exc:
        if args.verbose and exc.details:
            print(exc.details, file=sys.stderr)
        print(f"devkafka: error: {exc.summary}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
