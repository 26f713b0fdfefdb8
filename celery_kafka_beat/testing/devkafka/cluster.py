"""Local KRaft Kafka clusters (1 or 3 combined broker+controller nodes), one JVM per node.

Broker index ``i`` is also the node's Kafka ``node.id``, so a partition leader id from metadata is directly the
index to pass to :meth:`KafkaCluster.kill_broker` and friends.

Fault injection: crashes, graceful stops, pauses (signals); brokers whose wall clock a test can step
(``clock_skewable``, :meth:`KafkaCluster.set_clock_offset`, libfaketime: see ``faketime.py``); moving a partition's
leader to a chosen broker (:meth:`KafkaCluster.move_leader`).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from .assembly import (
    DEFAULT_KAFKA_VERSION,
    DevKafkaError,
    KafkaDistribution,
    assemble,
    devkafka_home,
    find_java,
    parse_version,
    tail_text,
)
from .faketime import OFFSET_FILE, faketime_env, find_libfaketime, read_offset, remove_shm, write_offset
from .reassign import alter_partition_reassignment

__all__ = [
    "DEFAULT_HEAP",
    "DEFAULT_START_TIMEOUT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "KafkaCluster",
    "PartitionState",
    "new_cluster_id",
]

log = logging.getLogger(__name__)

DEFAULT_HEAP = "512m"  # Why: measured enough for test traffic; Kafka's start script default (1 GiB) x3 is waste.
# Why 90 s: a 3-node start from cache takes ~3-6 s here; 90 s absorbs a loaded CI machine and still fails
# a hung start well inside pytest's 300 s per-test timeout.
DEFAULT_START_TIMEOUT_S = 90.0
# Why 30 s: a graceful KRaft shutdown takes about a second here; past 30 s something is stuck, so SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 30.0
# Why 0.1 s: readiness checks often enough to add no noticeable start latency, rarely enough to cost no CPU.
_POLL_INTERVAL_S = 0.1
# Why 2 s: a metadata request on loopback answers in milliseconds; the cap lets the loop re-check that the
# broker processes are still alive.
_METADATA_TIMEOUT_S = 2.0
# Why 10 s: leftover clusters at interpreter exit are throwaway; don't hold up exit for long.
_ATEXIT_STOP_TIMEOUT_S = 10.0
# Why 30 s: a leader move takes 0.1-0.3 s here (reassignment, election, metadata); a broker that just restarted
# first has to catch up into the in-sync replicas.
DEFAULT_MOVE_TIMEOUT_S = 30.0
# Why 0.05 s: how often a leader move re-reads metadata; it completes within a few polls.
_MOVE_POLL_S = 0.05
# Why 5: each attempt (a graceful restart of the quorum leader) hands the KRaft leadership to another voter; two
# attempts suffice unless brokers keep failing.
_QUORUM_MOVE_ATTEMPTS = 5

# JVM options besides heap and classpath; measured on 2 cores (1-node start to ready, RSS after start):
# default G1 + tiered ~1.8 s / ~245 MB; these ~1.35 s / ~205 MB.
JVM_FLAGS = (
    # A 512 MiB heap needs no concurrent collector; Serial starts faster and uses less memory than G1.
    "-XX:+UseSerialGC",
    # C1 only: less compile work competing with three brokers on two cores; peak throughput is irrelevant.
    "-XX:TieredStopAtLevel=1",
    # A broker out of heap should die visibly (exit code, log tail) rather than limp on.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

# Why 25 lines: with the separately quoted last error block, enough to show what the JVM did last.
_DETAIL_TAIL_LINES = 25
_HEAP_RE = re.compile(r"^\d+[kKmMgG]?$")
_EXCEPTION_RE = re.compile(r"\b[\w.$]+(?:Exception|Error)\b(?::|$)")
_LOG_LEVEL_RE = re.compile(r"\] (?:ERROR|FATAL) ")

# Clusters this process started and has not stopped; stopped at interpreter exit so brokers don't leak.
_RUNNING: set[KafkaCluster] = set()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (kernel-chosen by binding port 0; all held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _prop_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_log(path: Path, start: int = 0) -> str:
    """The log from byte ``start`` (where the current JVM began writing), at most its last 64 KiB."""
    try:
        with path.open("rb") as handle:
            # Why 64 KiB: enough for the fatal error and the shutdown lines after it; a multi-MB log is waste.
            handle.seek(max(start, path.stat().st_size - 65536))
            return handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _error_block(text: str) -> list[str]:
    """Lines of the last ERROR/FATAL log entry (with its stack trace, minus "at" frames), else []."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _LOG_LEVEL_RE.search(line)]
    if not starts:
        return []
    block = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        if line.startswith("["):  # the next log entry
            break
        if line.strip() and not line.strip().startswith(("at ", "...")):
            block.append(line.strip())
    return block


def _cause(text: str) -> str | None:
    """One line naming why a JVM failed: its last logged error/exception (and root cause), else None."""
    block = _error_block(text)
    if not block:  # e.g. StorageTool: "Exception in thread "main" ..." without a log entry
        block = [line.strip() for line in text.splitlines() if _EXCEPTION_RE.search(line)]
    exceptions = [line for line in block if _EXCEPTION_RE.search(line)]
    if not exceptions:
        return block[0] if block else None
    first, root = exceptions[0], exceptions[-1].removeprefix("Caused by: ")
    return first if root in first else f"{first}; root cause: {root}"


@dataclass
class _Node:
    index: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    client_ports: list[tuple[int, int]] = field(default_factory=list)  # (listen, advertised) per client listener
    log_start: int = 0  # size of server.log when the current JVM started (the log spans restarts)
    faketime_pids: list[int] = field(default_factory=list)  # JVMs started under libfaketime, not yet cleaned up

    @property
    def props_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def offset_file(self) -> Path:
        return self.directory / OFFSET_FILE


class PartitionState(NamedTuple):
    """A partition as the cluster metadata describes it (broker indexes)."""

    leader: int
    """-1 while the partition has none."""
    replicas: tuple[int, ...]
    """In preference order: the first is the preferred leader."""
    isr: tuple[int, ...]


class KafkaCluster:
    """A local Apache Kafka cluster in KRaft mode for development and tests.

    ``nodes`` is 1 (one combined broker+controller) or 3 (three combined nodes, static voters, replication
    factor 3, ``min.insync.replicas=2``). Jars come from :func:`assemble` (Maven Central, cached).
    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        nodes: int = 1,
        version: str = DEFAULT_KAFKA_VERSION,
        workdir: str | os.PathLike[str] | None = None,
        *,
        heap: str = DEFAULT_HEAP,
        broker_session_timeout_ms: int | None = None,
        extra_props: Mapping[str, object] | None = None,
        client_listeners: int = 0,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        detach: bool = False,
        keep_workdir: bool = False,
        clock_skewable: Iterable[int] = (),
        broker_env: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """Describe a cluster; nothing runs until :meth:`start`.

        ``workdir``: where node data, configs and logs go; default a fresh directory under
        ``<devkafka home>/clusters/`` that :meth:`stop` deletes unless ``keep_workdir`` (or the start failed).
        ``detach``: leave the brokers running when this Python process exits (used by the CLI).
        ``client_listeners``: extra PLAINTEXT listeners per broker (``C0``, ``C1``, ...), each advertised at another
        port that nothing listens on: a proxy put there (see :meth:`client_listener`) carries all traffic of the
        clients that bootstrap through listener ``k``'s advertised ports (:meth:`bootstrap_via`), metadata
        included, so cutting that proxy cuts exactly those clients off (the chaos harness's network partition).
        ``clock_skewable``: indexes of brokers whose wall clock :meth:`set_clock_offset` can step at runtime (their
        JVMs run under libfaketime, which :meth:`start` requires; offset 0 until set). :meth:`start` keeps the KRaft
        quorum leadership off these brokers while another can hold it.
        ``broker_env``: extra environment variables per broker index, for its JVMs (added last).
        """
        if nodes not in (1, 3):
            raise ValueError(f"nodes must be 1 or 3, not {nodes!r}")
        if not _HEAP_RE.match(heap):
            raise ValueError(f"heap must look like 512m or 1g, not {heap!r}")
        if client_listeners < 0:
            raise ValueError(f"client_listeners must not be negative, not {client_listeners!r}")
        if broker_session_timeout_ms is not None and broker_session_timeout_ms < 300:
            raise ValueError("broker_session_timeout_ms must be at least 300")
        skewable = tuple(sorted(set(clock_skewable)))
        env = {i: dict(extra) for i, extra in (broker_env or {}).items()}
        for i in (*skewable, *env):
            if not (isinstance(i, int) and 0 <= i < nodes):
                raise ValueError(f"broker index {i!r} in clock_skewable or broker_env: must be in 0..{nodes - 1}")
        parse_version(version)
        self.nodes = nodes
        self.version = version
        self.heap = heap
        self.broker_session_timeout_ms = broker_session_timeout_ms
        self.extra_props = {k: _prop_value(v) for k, v in (extra_props or {}).items()}
        self.client_listeners = client_listeners
        self.start_timeout = start_timeout
        self.detach = detach
        self.keep_workdir = keep_workdir
        self.clock_skewable = skewable
        self.broker_env = env
        self.cluster_id = new_cluster_id()
        self._workdir = Path(workdir).resolve() if workdir is not None else None
        self._owns_workdir = workdir is None
        self._nodes: list[_Node] = []
        self._dist: KafkaDistribution | None = None
        self._java = ""
        self._log_args: list[str] = []
        self._libfaketime: Path | None = None
        self._admin: AdminClient | None = None
        self._state = "new"

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Assemble (if needed), format storage, start every node and wait until all brokers are listed."""
        if self._state != "new":
            raise DevKafkaError(f"this KafkaCluster was already started (state {self._state}); make a new one")
        if self.clock_skewable:  # before any download: a missing package should fail at once
            self._libfaketime = find_libfaketime()
        self._dist = assemble(self.version)
        self._java = find_java()
        deadline = time.monotonic() + self.start_timeout
        workdir = self._make_workdir()
        self._log_args = self._dist.write_log_config(workdir)
        per_node = 2 + 2 * self.client_listeners
        ports = _free_ports(per_node * self.nodes)
        self._nodes = []
        for i in range(self.nodes):
            mine = ports[per_node * i : per_node * (i + 1)]
            extra = list(zip(mine[2::2], mine[3::2], strict=True))
            self._nodes.append(_Node(i, mine[0], mine[1], workdir / f"node-{i}", client_ports=extra))
        self._state = "running"
        if not self.detach:
            _RUNNING.add(self)
        started = time.monotonic()
        try:
            for node in self._nodes:
                node.directory.mkdir()
                node.props_path.write_text(self._render_properties(node), encoding="utf-8")
                if node.index in self.clock_skewable:
                    write_offset(node.offset_file, 0)
            self._format(deadline)
            for node in self._nodes:
                self._launch(node)
            self._wait_listed(range(self.nodes), deadline, "start")
            self._keep_quorum_leader_off(self.clock_skewable, deadline)
        except BaseException:
            self._kill_all()
            raise
        log.info(
            "Kafka %s, %d node(s) ready in %.1f s at %s (workdir %s)",
            self.version,
            self.nodes,
            time.monotonic() - started,
            self.bootstrap_servers,
            workdir,
        )
        return self

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every node: SIGTERM (graceful), then SIGKILL whatever is left after ``timeout`` seconds.

        Deletes the workdir if this object created it (unless ``keep_workdir``). Idempotent.
        """
        if self._state != "running":
            return
        # All at once: a 3-node stop then takes ~5.5 s (the last KRaft leader waits 5 s for a successor
        # that never comes). Stopping one by one is worse: the last broker's controlled shutdown needs a
        # controller quorum that no longer exists and hangs until SIGKILL.
        running = [node for node in self._nodes if node.running]
        for node in running:
            self._terminate(node)
        deadline = time.monotonic() + timeout
        for node in running:
            self._reap(node, deadline)
        for node in self._nodes:
            self._remove_faketime_files(node)
        self._state = "stopped"
        _RUNNING.discard(self)
        if self._owns_workdir and not self.keep_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if self._state == "new" else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- inspection

    @property
    def workdir(self) -> Path:
        """The cluster directory (``node-<i>/`` per node with server.properties, server.log, data/)."""
        if self._workdir is None:
            raise DevKafkaError("cluster not started yet: workdir is chosen by start()")
        return self._workdir

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``127.0.0.1:<port>`` of every broker (ports are fixed for the cluster's life)."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self._started_nodes())

    def broker_port(self, i: int) -> int:
        """PLAINTEXT port of broker ``i``."""
        return self._node(i).port

    def client_listener(self, i: int, k: int) -> tuple[int, int]:
        """``(listen port, advertised port)`` of client listener ``k`` on broker ``i``: a proxy that listens on the
        advertised port and forwards to the listen port carries that listener's clients."""
        return self._node(i).client_ports[k]

    def bootstrap_via(self, k: int) -> str:
        """Bootstrap servers for a client that must reach the cluster only through client listener ``k``."""
        return ",".join(f"127.0.0.1:{node.client_ports[k][1]}" for node in self._started_nodes())

    def broker_pid(self, i: int) -> int | None:
        """Process id of broker ``i``, or None when it is not running."""
        node = self._node(i)
        return node.process.pid if node.process is not None and node.running else None

    def is_running(self, i: int) -> bool:
        """True when broker ``i``'s JVM is alive (paused counts as alive)."""
        return self._node(i).running

    def broker_rss_bytes(self, i: int) -> int:
        """Resident memory of broker ``i``'s JVM, from /proc/<pid>/status."""
        pid = self.broker_pid(i)
        if pid is None:
            raise DevKafkaError(f"broker {i} is not running")
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise DevKafkaError(f"no VmRSS in /proc/{pid}/status")

    def log_path(self, i: int) -> Path:
        """Broker ``i``'s log file (its stdout/stderr, including storage formatting and JVM errors)."""
        return self._node(i).log_path

    def describe(self) -> dict[str, Any]:
        """JSON-able description (used for the CLI state file)."""
        return {
            "version": self.version,
            "nodes": self.nodes,
            "cluster_id": self.cluster_id,
            "workdir": str(self.workdir),
            "owns_workdir": self._owns_workdir and not self.keep_workdir,
            "bootstrap": self.bootstrap_servers,
            "brokers": [
                {
                    "index": node.index,
                    "pid": self.broker_pid(node.index),
                    "port": node.port,
                    "controller_port": node.controller_port,
                    "properties": str(node.props_path),
                    "log": str(node.log_path),
                }
                for node in self._nodes
            ],
        }

    # ------------------------------------------------------------------------------------- fault injection

    def kill_broker(self, i: int) -> None:
        """SIGKILL broker ``i`` (a crash: no controlled shutdown, unflushed data is recovered on restart)."""
        node = self._node(i)
        if node.process is not None and node.running:
            node.process.kill()
            node.process.wait()
        node.paused = False
        self._remove_faketime_files(node)

    def stop_broker(self, i: int, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Gracefully stop broker ``i`` (SIGTERM, SIGKILL after ``timeout`` seconds)."""
        node = self._node(i)
        if node.running:
            self._terminate(node)
            self._reap(node, time.monotonic() + timeout)

    def pause_broker(self, i: int) -> None:
        """SIGSTOP broker ``i``: it stays connected but stops answering (a GC pause / frozen VM)."""
        node = self._node(i)
        if node.process is None or not node.running:
            raise DevKafkaError(f"broker {i} is not running")
        node.process.send_signal(signal.SIGSTOP)
        node.paused = True

    def resume_broker(self, i: int) -> None:
        """SIGCONT broker ``i`` after :meth:`pause_broker`."""
        node = self._node(i)
        if node.process is not None and node.running:
            node.process.send_signal(signal.SIGCONT)
        node.paused = False

    def restart_broker(self, i: int, timeout: float | None = None) -> None:
        """Start broker ``i`` again (same ports, config and data) and wait until the cluster lists it.

        A running broker is stopped gracefully first. ``timeout`` defaults to the cluster's start timeout.
        """
        node = self._node(i)
        if self._state != "running":
            raise DevKafkaError("cluster is not running")
        if node.running:
            self.stop_broker(i)
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        self._launch(node)
        try:
            self._wait_listed([i], deadline, "restart")
        except BaseException:
            self.kill_broker(i)
            raise

    def set_clock_offset(self, i: int, seconds: float) -> None:
        """Step broker ``i``'s wall clock to ``seconds`` (whole seconds) off the real time; 0 sets it right again.

        The broker must be in ``clock_skewable``. It reads the new offset on its next clock call (records it appends
        from then on carry the stepped ``LogAppendTime``); its monotonic clock is untouched. The offset survives
        :meth:`restart_broker`. Whole seconds because libfaketime parses fractions by the JVM's locale.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not float(seconds).is_integer():
            raise ValueError(f"clock offset must be whole seconds, not {seconds!r}")
        write_offset(self._skewable_node(i).offset_file, int(seconds))

    def clock_offset(self, i: int) -> int:
        """The wall-clock offset (seconds) broker ``i`` runs with; it must be in ``clock_skewable``."""
        return read_offset(self._skewable_node(i).offset_file)

    def partition_state(self, topic: str, partition: int = 0) -> PartitionState:
        """Leader, replicas (preferred first) and in-sync replicas of a partition, from the cluster metadata."""
        metadata = self._admin_client().list_topics(topic, timeout=_METADATA_TIMEOUT_S)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise DevKafkaError(f"topic {topic}: {'not in metadata' if described is None else described.error}")
        part = described.partitions.get(partition)
        if part is None:
            raise DevKafkaError(f"topic {topic} has no partition {partition}")
        return PartitionState(part.leader, tuple(part.replicas), tuple(part.isrs))

    def move_leader(self, topic: str, partition: int, broker: int, timeout: float = DEFAULT_MOVE_TIMEOUT_S) -> None:
        """Make broker ``broker`` the leader of ``topic``-``partition`` and return once the metadata says so.

        The replicas stay the same; ``broker`` is put first in their order (a reassignment that moves no data, so
        it is also the preferred leader from now on and Kafka's automatic rebalancing keeps it there), then a
        preferred leader election runs once it is in sync. Takes 0.15-0.6 s here.
        """
        self._node(broker)
        deadline = time.monotonic() + timeout
        state = self._first_partition_state(topic, partition, deadline)
        if state.leader == broker and state.replicas[:1] == (broker,):
            return
        if broker not in state.replicas:
            raise DevKafkaError(f"broker {broker} holds no replica of {topic}-{partition} (replicas {state.replicas})")
        order = [broker, *(r for r in state.replicas if r != broker)]
        if list(state.replicas) != order:
            reachable = [n for n in self._nodes if n.running and not n.paused]
            bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in reachable) or self.bootstrap_servers
            alter_partition_reassignment(bootstrap, topic, partition, order, timeout_ms=int(timeout * 1000))
        tp = TopicPartition(topic, partition)
        last_error = "no election yet"
        while True:
            try:
                state = self.partition_state(topic, partition)
            except (DevKafkaError, KafkaException) as exc:  # a broker restarting: metadata briefly unavailable
                last_error = str(exc)
            else:
                if state.leader == broker:
                    return
                if state.replicas[:1] == (broker,) and broker in state.isr:
                    last_error = self._elect_preferred(tp)
                else:
                    last_error = f"waiting for broker {broker} first in the replicas and in sync: {state}"
            if time.monotonic() >= deadline:
                raise DevKafkaError(
                    f"broker {broker} did not become the leader of {topic}-{partition} within {timeout:.0f} s "
                    f"({last_error})"
                )
            time.sleep(_MOVE_POLL_S)

    def quorum_leader(self) -> int | None:
        """Index of the broker leading the KRaft controller quorum (the active controller), or None if unknown.

        From the nodes' ``quorum-state`` files, which each voter rewrites on every election (KRaft's metadata
        responses name a random broker as the "controller", not the active one).
        """
        return self._quorum_state()[0]

    # ---------------------------------------------------------------------------------------------- internals

    def _node(self, i: int) -> _Node:
        nodes = self._started_nodes()
        if not 0 <= i < len(nodes):
            raise IndexError(f"broker index {i} out of range 0..{len(nodes) - 1}")
        return nodes[i]

    def _started_nodes(self) -> list[_Node]:
        if not self._nodes:
            raise DevKafkaError("cluster not started yet")
        return self._nodes

    def _skewable_node(self, i: int) -> _Node:
        node = self._node(i)
        if i not in self.clock_skewable:
            raise DevKafkaError(
                f"broker {i} has no steppable clock: pass clock_skewable=({i},) to KafkaCluster "
                f"(clock_skewable={self.clock_skewable})"
            )
        return node

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(
                {
                    "bootstrap.servers": self.bootstrap_servers,
                    "reconnect.backoff.ms": 50,
                    "reconnect.backoff.max.ms": 500,
                    # A broker killed by a test refuses connections; that is expected, not worth stderr lines.
                    "log_level": 0,
                }
            )
        return self._admin

    def _first_partition_state(self, topic: str, partition: int, deadline: float) -> PartitionState:
        """:meth:`partition_state`, waiting (until ``deadline``) while the broker asked does not know the partition
        yet: a topic just created reaches every broker's metadata within moments, not at once."""
        while True:
            try:
                return self.partition_state(topic, partition)
            except (DevKafkaError, KafkaException):
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_MOVE_POLL_S)

    def _elect_preferred(self, tp: TopicPartition) -> str:
        """Run a preferred leader election for ``tp``; return what happened (for a timeout message)."""
        try:
            from confluent_kafka import ElectionType  # noqa: PLC0415 (confluent-kafka 2.6+; the rest needs 2.3)
        except ImportError as exc:
            raise DevKafkaError("move_leader needs confluent-kafka 2.6 or later (AdminClient.elect_leaders)") from exc
        try:
            result = self._admin_client().elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=10)
        except KafkaException as exc:
            return f"election failed: {exc}"
        error: KafkaError | None = result.get(tp)
        if error is None or error.code() == KafkaError.ELECTION_NOT_NEEDED:
            return "elected; waiting for the metadata"
        return f"election failed: {error}"

    def _quorum_state(self) -> tuple[int | None, int]:
        """(leader index or None, epoch) of the KRaft quorum: the newest epoch any node has recorded."""
        best: tuple[int | None, int] = (None, -1)
        for node in self._nodes:
            path = node.directory / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            if leader >= 0 and epoch > best[1]:
                best = (leader, epoch)
        return best

    def _keep_quorum_leader_off(self, brokers: Sequence[int], deadline: float) -> None:
        """While one of ``brokers`` leads the KRaft quorum, restart it gracefully (it resigns, another voter takes
        over). Why: a controller whose wall clock steps forward sees its followers' fetch deadlines pass and
        resigns: a controller election, and errors for the brokers' heartbeats while it settles."""
        if not brokers or len(brokers) >= self.nodes:
            return
        for _ in range(_QUORUM_MOVE_ATTEMPTS):
            leader, epoch = self._wait_quorum_leader(-1, deadline)
            if leader not in brokers:
                return
            log.info("broker %d leads the KRaft quorum; restarting it so that a broker with a true clock does", leader)
            self.restart_broker(leader, timeout=max(1.0, deadline - time.monotonic()))
            self._wait_quorum_leader(epoch, deadline)
        raise DevKafkaError(f"the KRaft quorum leadership stayed on brokers {list(brokers)}")

    def _wait_quorum_leader(self, newer_than: int, deadline: float) -> tuple[int, int]:
        while True:
            leader, epoch = self._quorum_state()
            if leader is not None and epoch > newer_than:
                return leader, epoch
            if time.monotonic() >= deadline:
                raise DevKafkaError(f"no KRaft quorum leader with an epoch above {newer_than} in time")
            time.sleep(_POLL_INTERVAL_S)

    def _node_env(self, node: _Node, *, broker: bool) -> dict[str, str] | None:
        """The environment of node ``node``'s JVMs, or None to inherit this process's unchanged."""
        extra = self.broker_env.get(node.index, {})
        faked = broker and node.index in self.clock_skewable
        if not extra and not faked:
            return None
        env = dict(os.environ)
        if faked:
            assert self._libfaketime is not None
            env = faketime_env(self._libfaketime, node.offset_file, env)
        return env | extra

    def _remove_faketime_files(self, node: _Node) -> None:
        """Forget the node's exited JVMs that ran under libfaketime, deleting what they left in /dev/shm."""
        current = node.process.pid if node.process is not None and node.running else None
        for pid in [p for p in node.faketime_pids if p != current]:
            remove_shm(pid)
            node.faketime_pids.remove(pid)

    def _make_workdir(self) -> Path:
        if self._workdir is None:
            parent = devkafka_home() / "clusters"
            parent.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.nodes}n-{self.version}-", dir=parent))
        else:
            self._workdir.mkdir(parents=True, exist_ok=True)
            existing = [p.name for p in self._workdir.glob("node-*")]
            if existing:
                raise DevKafkaError(f"workdir {self._workdir} already holds {existing}: use an empty directory")
        return self._workdir

    def _render_properties(self, node: _Node) -> str:
        single = self.nodes == 1
        replicas = "1" if single else "3"
        min_isr = "1" if single else "2"
        names = [f"C{k}" for k in range(len(node.client_ports))]
        listeners = [f"PLAINTEXT://127.0.0.1:{node.port}", f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        listeners += [f"{n}://127.0.0.1:{ports[0]}" for n, ports in zip(names, node.client_ports, strict=True)]
        advertised = [f"PLAINTEXT://127.0.0.1:{node.port}"]
        advertised += [f"{n}://127.0.0.1:{ports[1]}" for n, ports in zip(names, node.client_ports, strict=True)]
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.index),
            "controller.quorum.voters": ",".join(f"{n.index}@127.0.0.1:{n.controller_port}" for n in self._nodes),
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{n}:PLAINTEXT" for n in ["PLAINTEXT", "CONTROLLER", *names]),
            "log.dirs": str(node.directory / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            # Internal topics: one partition each (50 offsets partitions would slow the first group use) and a
            # replication factor the cluster can satisfy.
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "1",
            # Why 0: consumer groups start at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Why 16 MiB: the cleaner allocates this at start (default 128 MiB), too much for a 512 MiB heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # Why 1 s: compaction tests need the cleaner to look for work often (default 15 s).
            "log.cleaner.backoff.ms": "1000",
            # Topics must be created explicitly, as in production, so tests notice a missing create.
            "auto.create.topics.enable": "false",
        }
        if parse_version(self.version)[0] >= 4:
            props |= {
                "share.coordinator.state.topic.replication.factor": replicas,
                "share.coordinator.state.topic.min.isr": min_isr,
                "share.coordinator.state.topic.num.partitions": "1",
            }
        if self.broker_session_timeout_ms is not None:
            session = self.broker_session_timeout_ms
            props["broker.session.timeout.ms"] = str(session)
            # Heartbeats must come well within the session (defaults: 2 s within 9 s); a third allows one loss.
            props["broker.heartbeat.interval.ms"] = str(max(100, min(2000, session // 3)))
        props |= self.extra_props
        lines = [f"# Generated by celery_kafka_beat.testing.devkafka for node {node.index} of {self.nodes}."]
        lines += [f"{key}={value}" for key, value in props.items()]
        return "\n".join(lines) + "\n"

    def _java_cmd(self, heap_args: Sequence[str], *args: str) -> list[str]:
        assert self._dist is not None
        return [self._java, *heap_args, *JVM_FLAGS, *self._log_args, "-cp", self._dist.classpath, *args]

    def _popen(self, node: _Node, cmd: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        with node.log_path.open("ab") as out:
            node.log_start = out.tell()
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
                # Own session: a Ctrl-C in the terminal reaches only Python, which then stops brokers in order
                # (and detached CLI brokers survive the CLI's exit).
                start_new_session=True,
                env=None if env is None else dict(env),
            )

    def _format(self, deadline: float) -> None:
        """Run kafka.tools.StorageTool for every node in parallel (it calls System.exit: subprocess)."""
        procs = [
            (
                node,
                self._popen(
                    node,
                    self._java_cmd(
                        [f"-Xmx{self.heap}"],
                        "kafka.tools.StorageTool",
                        "format",
                        # One argument: an id may start with "-" (base64url), which argparse takes for an option.
                        f"--cluster-id={self.cluster_id}",
                        "-c",
                        str(node.props_path),
                    ),
                    self._node_env(node, broker=False),
                ),
            )
            for node in self._nodes
        ]
        try:
            for node, proc in procs:
                try:
                    code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise self._error(node, "formatting storage did not finish in time", exited=False) from None
                if code != 0:
                    raise self._error(node, f"formatting storage failed (exit code {code})")
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _launch(self, node: _Node) -> None:
        heap = [f"-Xmx{self.heap}", f"-Xms{self.heap}"]
        self._remove_faketime_files(node)  # of a JVM that exited by itself
        env = self._node_env(node, broker=True)
        node.process = self._popen(node, self._java_cmd(heap, "kafka.Kafka", str(node.props_path)), env)
        node.paused = False
        if node.index in self.clock_skewable:
            node.faketime_pids.append(node.process.pid)

    def _error(self, node: _Node, what: str, *, exited: bool = True) -> DevKafkaError:
        """DevKafkaError naming the cause (for an exited JVM, its last line if nothing better) and log tail."""
        text = _read_log(node.log_path, node.log_start)
        cause = _cause(text)
        if cause is None and exited:
            cause = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
        if cause is not None:
            what = f"{what}: {cause}"
        details = f"--- last lines of {node.log_path} ---\n{tail_text(text, _DETAIL_TAIL_LINES)}"
        block = _error_block(text)
        if block:  # a failing broker logs its fatal error, then dozens of shutdown lines that bury it
            details = f"--- last error in {node.log_path} ---\n" + "\n".join(block[:15]) + "\n" + details
        return DevKafkaError(f"Kafka {self.version} node {node.index}: {what} (log: {node.log_path})", details)

    def _check_alive(self, indexes: Sequence[int], action: str) -> None:
        for i in indexes:
            node = self._nodes[i]
            if node.process is None or node.process.poll() is not None:
                code = None if node.process is None else node.process.returncode
                raise self._error(node, f"broker exited with code {code} during {action}")

    def _wait_listed(self, indexes: Sequence[int], deadline: float, action: str) -> None:
        """Wait until brokers ``indexes`` accept connections and the cluster metadata lists them.

        Listed means registered and unfenced with an active controller, i.e. topics can be created and
        written. Polls; raises early with the log tail if a broker process exits.
        """
        wanted = list(indexes)
        pending = set(wanted)
        while pending:  # cheap TCP probes first: librdkafka would back off between refused connects
            self._check_alive(wanted, action)
            pending = {i for i in pending if not _port_open(self._nodes[i].port)}
            if pending:
                self._pause_or_timeout(deadline, pending, action, "port not accepting connections")
        admin = AdminClient(
            {
                "bootstrap.servers": ",".join(f"127.0.0.1:{self._nodes[i].port}" for i in wanted),
                # Why 50/500 ms: retry quickly while brokers finish starting (default backoff grows to 10 s).
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
                # Refused connects during start-up are expected; don't print them to stderr.
                "log_level": 0,
            }
        )
        listed: set[int] = set()
        while True:
            self._check_alive(wanted, action)
            remaining = deadline - time.monotonic()
            try:
                metadata = admin.list_topics(timeout=max(0.1, min(_METADATA_TIMEOUT_S, remaining)))
            except KafkaException:
                metadata = None
            if metadata is not None:
                listed = set(metadata.brokers)
                if metadata.controller_id >= 0 and set(wanted) <= listed:
                    return
            missing = set(wanted) - listed
            self._pause_or_timeout(deadline, missing, action, f"not listed in cluster metadata {sorted(listed)}")

    def _pause_or_timeout(self, deadline: float, pending: set[int], action: str, why: str) -> None:
        if time.monotonic() >= deadline:
            node = self._nodes[min(pending)]
            raise self._error(
                node, f"broker(s) {sorted(pending)} not ready in time during {action} ({why})", exited=False
            )
        time.sleep(_POLL_INTERVAL_S)

    def _terminate(self, node: _Node) -> None:
        if node.process is not None and node.running:
            if node.paused:  # a stopped process would not act on SIGTERM
                node.process.send_signal(signal.SIGCONT)
                node.paused = False
            node.process.terminate()

    def _reap(self, node: _Node, deadline: float) -> None:
        if node.process is None:
            return
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("Kafka node %d did not stop in time; killing it", node.index)
            node.process.kill()
            node.process.wait()
        self._remove_faketime_files(node)

    def _kill_all(self) -> None:
        """After a failed start: kill what runs, keep the workdir (its logs explain the failure)."""
        for node in self._nodes:
            if node.process is not None and node.running:
                node.process.kill()
                node.process.wait()
            self._remove_faketime_files(node)
        self._state = "stopped"
        _RUNNING.discard(self)


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_RUNNING):
        with contextlib.suppress(Exception):
            cluster.stop(timeout=_ATEXIT_STOP_TIMEOUT_S)
