"""Helpers for the runtime's integration tests: polling waits, node processes, reading results back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import celery_kafka_beat
from celery_kafka_beat import wire
from celery_kafka_beat.protocol import ClusterState
from celery_kafka_beat.protocol.assignment import Balancer, tick_weight
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime import read_topic
from celery_kafka_beat.runtime.kafka import LogRecord

T = TypeVar("T")

REPO_ROOT = Path(celery_kafka_beat.__file__).resolve().parent.parent
#: Where the package imported by this test run lives (works for a checkout and for a copy of one).
PACKAGE_PARENT = Path(celery_kafka_beat.__file__).parent.parent


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def now_ms() -> int:
    return int(time.time() * 1000)


# -- node processes ----------------------------------------------------------------------------------------------


@dataclass
class NodeProc:
    """One ``python -m proof.nodeproc`` process and its files."""

    name: str
    out: Path
    status_file: Path
    log: Path
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    ready_at: float | None = None
    """time.time() when the process printed READY (its first session went live)."""
    _reader: threading.Thread | None = None
    _stopped: bool = False

    def start(self) -> NodeProc:
        self.ready_at = None
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self.env,
                cwd=str(self.out.parent),
            )
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "READY" and self.ready_at is None and self.proc is proc:
                    self.ready_at = time.time()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> float:
        def ready() -> float | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.ready_at

        return wait_for(ready, timeout, f"node {self.name} READY")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            if self._stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self._stopped = False
        self._forget_status()
        self.close_pipes()

    def close_pipes(self) -> None:
        """After the process exited: let the stdout reader reach EOF, then close the pipe."""
        if self._reader is not None:
            self._reader.join(10)
        if self.proc is not None and self.proc.stdout is not None and self.proc.poll() is not None:
            self.proc.stdout.close()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait for exit, return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            if self._stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.close_pipes()
            raise AssertionError(f"node {self.name} did not exit after SIGTERM:\n{self.log_tail()}") from None
        self._stopped = False
        self.close_pipes()
        return code

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self._stopped = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self._stopped = False

    def _forget_status(self) -> None:
        self.status_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def owned(self) -> set[str]:
        status = self.status()
        if status is None or not status.get("live") or not self.alive():
            return set()
        return set(status["owned"])

    def dispatches(self) -> list[dict[str, Any]]:
        return read_dispatches(self.out)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_node(
    workdir: Path,
    name: str,
    bootstrap: str,
    topic: str,
    entries: Mapping[str, int],
    *,
    lease_ms: int = 3000,
    heartbeat_ms: int = 1000,
    delivery: str = "at-most-once",
    catchup: str = "once",
    extra_args: Iterable[str] = (),
    prefix: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> NodeProc:
    """Describe (not start) a node process whose files live in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{name}.jsonl"
    status = workdir / f"{name}.status.json"
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "proof.nodeproc",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--node",
        name,
        "--entries",
        ",".join(f"{k}={v}" for k, v in entries.items()),
        "--lease-ms",
        str(lease_ms),
        "--heartbeat-ms",
        str(heartbeat_ms),
        "--delivery",
        delivery,
        "--catchup",
        catchup,
        "--out",
        str(out),
        "--status-file",
        str(status),
        *extra_args,
    ]
    full_env = node_env()
    full_env.update(env or {})
    return NodeProc(name, out, status, workdir / f"{name}.log", argv, full_env)


def cleanup(nodes: Iterable[NodeProc]) -> None:
    """Kill whatever is still running (test teardown)."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            if node._stopped:
                node.proc.send_signal(signal.SIGCONT)
            node.proc.kill()
            node.proc.wait(10)
        node.close_pipes()


# -- results -----------------------------------------------------------------------------------------------------


def read_dispatches(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def all_dispatches(nodes: Iterable[NodeProc]) -> list[dict[str, Any]]:
    paths = {n.out for n in nodes}
    return [d for p in sorted(paths) for d in read_dispatches(p)]


def duplicates(dispatches: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], int]:
    counts = Counter((d["entry"], d["tick"]) for d in dispatches)
    return {k: v for k, v in counts.items() if v > 1}


@dataclass
class FoldResult:
    state: ClusterState
    decided: dict[tuple[str, int], str]
    """(entry, tick) -> the session whose decision of it was valid."""
    records: list[LogRecord]
    low: int
    from_offset: int
    """Decisions are known from this offset on (everything, if the topic was never truncated)."""


def fold_topic(bootstrap: str, topic: str) -> FoldResult:
    """Read the whole topic and fold it, collecting every valid decision.

    If the topic was truncated, the fold starts from the earliest complete snapshot that covers the gap.
    """
    low, records = read_topic(bootstrap, topic)
    state = ClusterState()
    start = 0
    if low > 0:
        parts: dict[str, dict[int, str]] = {}
        for r in records:
            if isinstance(r.record, wire.SnapshotPart):
                got = parts.setdefault(r.record.snap_id, {})
                got[r.record.part] = r.record.data
                if len(got) == r.record.parts and r.record.as_of >= low - 1:
                    state = ClusterState.from_json("".join(got[i] for i in range(r.record.parts)))
                    start = r.record.as_of + 1
                    break
        else:
            raise AssertionError(f"topic truncated at {low} without a covering snapshot")
    decided: dict[tuple[str, int], str] = {}
    for r in records:
        if r.offset < start:
            continue
        outcome = state.apply(r.offset, r.timestamp, r.record)
        assert r.record is not None
        for item in outcome.decided:
            key = (item.entry, item.tick)
            assert key not in decided, f"tick decided twice in the log: {key}"
            decided[key] = r.record.session
    return FoldResult(state, decided, records, low, start)


def goodbye_time(records: Iterable[LogRecord], session: str) -> int | None:
    """Broker timestamp of the session's goodbye record, if any."""
    for r in records:
        if isinstance(r.record, wire.Goodbye) and r.record.session == session:
            return r.timestamp
    return None


def proc_owners(nodes: Iterable[NodeProc]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        for e in n.owned():
            owners[e].append(n.name)
    return owners


def balanced(periods: Mapping[str, int], owned: Mapping[str, Iterable[str]]) -> bool:
    """Whether every entry is owned by one of the sessions in ``owned`` (session -> entries) and the balancer, asked
    from that ownership with those sessions as candidates, would move nothing: the stable state."""
    sessions = frozenset(owned)
    if not sessions:
        return False
    mine = {s: set(es) for s, es in owned.items()}
    if sorted(e for es in mine.values() for e in es) != sorted(periods):
        return False
    schedule = IntervalSchedule(dict(periods))
    weights = {e: tick_weight(schedule, e) for e in periods}
    return not Balancer().moves(weights, dict.fromkeys(periods, sessions), mine)


def procs_settled(nodes: list[NodeProc], periods: Mapping[str, int]) -> dict[str, list[str]] | None:
    """The ownership, once it is stable: every entry owned once by a live node and nothing left for the balancer
    to move among the live sessions."""
    owned = {}
    for n in nodes:
        status = n.status()
        if n.alive() and status is not None and status["live"]:
            owned[status["session"]] = n.owned()
    if not balanced(periods, owned):
        return None
    return proc_owners(nodes)
