"""The Kafka runtime: one background thread that drives a :class:`~celery_kafka_beat.protocol.NodeCore` with
confluent-kafka.

The thread owns one ``Producer``, one ``Consumer`` (manually assigned to the sync topic's only partition, no
consumer group), one ``AdminClient`` and the core. It rebuilds the cluster state by reading the topic from its low
watermark to its high watermark, starts a session, then loops: poll records, feed them to the core in offset order,
run the core's timers and carry out its actions (append a record, dispatch a tick, delete records a snapshot
covers).

**Fork:** librdkafka clients do not survive ``fork()``. :meth:`KafkaNode.start` creates every client in the new
thread of the *calling* process; call it in the process that will use the node (with ``celery worker -B``: in the
beat process, after the fork), never before a fork.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import (
    Action,
    Append,
    Bootstrap,
    ClusterState,
    Dispatch,
    NodeCore,
    NodeSettings,
    Note,
    Schedule,
    Truncate,
    Waiter,
)
from celery_kafka_beat.runtime.topic import (
    MAX_MESSAGE_BYTES,
    TopicConfigError,
    access_error,
    ensure_topic,
)

__all__ = [
    "DispatchCallback",
    "KafkaNode",
    "LogRecord",
    "NodeStatus",
    "client_config",
    "monotonic_ms",
    "read_cluster_state",
    "read_topic",
]

log = logging.getLogger(__name__)
_rdlog = logging.getLogger("celery_kafka_beat.runtime.librdkafka")


class _TransientNotices(logging.Filter):
    """Logs librdkafka's warnings that it is retrying something that settles by itself at INFO, not WARNING.

    ``Failed to acquire idempotence PID from broker ...: Coordinator load in progress: retrying``: every replica's
    idempotent producer asks a broker for a producer id at start; a broker that started moments ago answers "not
    yet" and librdkafka retries within milliseconds. It looked alarming in every replica's start-up log and meant
    nothing (docs/getting-started.md, "What the logs say")."""

    _TRANSIENT = ("Coordinator load in progress", "COORDINATOR_LOAD_IN_PROGRESS")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            message = record.getMessage()
            if "retrying" in message and any(t in message for t in self._TRANSIENT):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_rdlog.addFilter(_TransientNotices())

DispatchCallback = Callable[[Dispatch], None]

# Why 100 ms: the longest the loop blocks in poll; bounds how late a stop request or a timer is noticed when no
# record arrives (the core's next_wakeup usually asks for less).
_MAX_WAIT_MS: Final = 100
# Why 1 s: the pause before retrying after the cluster did not answer or the loop hit an unexpected error; short
# next to the lease, long enough not to spin.
_RETRY_S: Final = 1.0
# Why 10 s: one log line per distinct client error per this interval while a broker is down.
_ERROR_LOG_INTERVAL_S: Final = 10.0
# Why 30 s: how long reading the topic at start-up may take before the node says so (it keeps trying).
_READ_TIMEOUT_S: Final = 30.0
# Why 5 s: the longest stop() waits for the producer to deliver the last records (goodbye, acks).
_FLUSH_S: Final = 5.0
# Why 1 KiB: a record's size on the wire besides its value (key, headers, batch framing), with room to spare.
_RECORD_OVERHEAD: Final = 1024
# Why 1 h: after Kafka denied DeleteRecords (a missing ACL), how long before trying (and logging) again; the topic
# grows meanwhile, but retrying every snapshot would only repeat the error.
_DELETE_DENIED_RETRY_S: Final = 3600.0

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_OFFSET_RESET_CODES: Final = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
_TOO_LARGE_CODES: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


#: Linux's CLOCK_BOOTTIME is monotonic and, unlike CLOCK_MONOTONIC, keeps counting while the machine is suspended:
#: a replica resumed after a suspend longer than its lease sees its lease as expired and does not publish.
_LEASE_CLOCK: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def monotonic_ms() -> int:
    """The default clock, in milliseconds: CLOCK_BOOTTIME where there is one (Linux), else CLOCK_MONOTONIC."""
    return time.clock_gettime_ns(_LEASE_CLOCK) // 1_000_000


def client_config(bootstrap_servers: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings shared by the producer, the consumer and the admin client; ``extra`` (security settings and the
    like) is merged last. Nothing here ever logs a value of ``extra``."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        # Why 1 s: librdkafka's default (10 s) would keep a node cut off long after a broker came back.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 1000,
        # Small records, latency matters (a decision is read back before it is acted on): no Nagle delay.
        "socket.nagle.disable": True,
        "logger": _rdlog,
    }
    conf.update(extra or {})
    return conf


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A consistent view of a node, taken under its lock."""

    node: str
    session: str | None
    live: bool
    owned: frozenset[str]
    offset: int
    """The last offset folded into the node's state (-1 before the first)."""
    running: bool
    error: str | None
    waiting: bool = False
    """Waiting for a snapshot: records that no snapshot covers were deleted (see Bootstrap)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    offset: int
    timestamp: int
    record: wire.Record | None


class _Rebootstrap(Exception):
    """The topic changed under the consumer (records deleted past its position): read it again from the start."""


class _Stopped(Exception):
    """A stop was requested while the node was still reading the topic."""


class _WireLog:
    """Logs each kind of undecodable record once (with the first one's details), and counts them all."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        """Undecodable records skipped, by kind of problem (``WireError.code``)."""

    def decode(self, offset: int, value: bytes | None) -> wire.Record | None:
        try:
            return wire.decode(value)
        except wire.WireError as exc:
            code = exc.code
            seen = self.skipped.get(code)
            if seen is None and len(self.skipped) >= 1000:
                code = "other"
                seen = self.skipped.get(code)
            self.skipped[code] = (seen or 0) + 1
            if seen is None:
                log.warning(
                    "skipping a record the sync topic holds at offset %d that this node cannot use (%s: %s); further "
                    "records with this problem (%s) are skipped without a log line",
                    offset,
                    type(exc).__name__,
                    str(exc)[:200],
                    code,
                )
            return None


class _ErrorLog:
    """Rate-limits client error logging per error code."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], float] = {}

    def __call__(self, what: str, err: KafkaError) -> None:
        key = (what, err.code())
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= _ERROR_LOG_INTERVAL_S:
            self._last[key] = now
            log.warning("%s error: %s", what, err)


def _offset(msg: Message) -> int:
    offset = msg.offset()
    if offset is None or offset < 0:
        raise KafkaException(KafkaError(KafkaError._BAD_MSG, f"consumed a record without an offset ({offset})"))
    return offset


def _timestamp(msg: Message, topic: str) -> int:
    ts_type, ts = msg.timestamp()
    if ts_type != TIMESTAMP_LOG_APPEND_TIME:
        raise TopicConfigError(
            f"record at offset {msg.offset()} of sync topic {topic!r} has a producer timestamp (type {ts_type}), "
            "not a broker one: the topic's message.timestamp.type must be LogAppendTime (kafka-configs.sh "
            f"--bootstrap-server <servers> --alter --entity-type topics --entity-name {topic} "
            "--add-config message.timestamp.type=LogAppendTime)"
        )
    return int(ts)


def _consumer_config(base: Mapping[str, Any], group: str) -> dict[str, Any]:
    conf = dict(base)
    conf.update(
        {
            "group.id": group,  # required by librdkafka; nothing joins a group (the partition is assigned)
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A deletion of records past our position must not be skipped over silently: it restarts the reading.
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 1,
            "enable.partition.eof": False,
            # Nothing of ours is written in a transaction: an open transaction of some other producer on the topic
            # must not hold every reader (and with it every lease) until it times out.
            "isolation.level": "read_uncommitted",
        }
    )
    return conf


def _producer_config(base: Mapping[str, Any]) -> dict[str, Any]:
    conf = dict(base)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "compression.type": "lz4",
            "message.timeout.ms": 30000,
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
    )
    return conf


def _scan(
    consumer: Consumer,
    topic: str,
    feed: Callable[[int, int, bytes | None], None],
    *,
    begin: Callable[[int, int], None] = lambda low, high: None,
    should_stop: Callable[[], bool] = lambda: False,
    timeout: float | None = None,
    errors: _ErrorLog | None = None,
) -> tuple[int, int]:
    """Assign ``consumer`` to the topic's low watermark and feed every record up to the high watermark taken at
    the start, calling ``begin(low, high)`` first. Returns ``(low, high)``; the consumer is left positioned at
    ``high``."""
    errors = errors or _ErrorLog()
    tp = TopicPartition(topic, 0)
    low, high = consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)
    begin(low, high)
    consumer.assign([TopicPartition(topic, 0, low if high > low else high)])
    deadline = None if timeout is None else time.monotonic() + timeout
    next_offset = low
    while next_offset < high:
        if should_stop():
            raise _Stopped
        if deadline is not None and time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"reading {topic!r} up to offset {high}"))
        msg = consumer.poll(0.2)
        if msg is None:
            # Offsets without a record (transaction markers of a foreign producer) still move the position.
            position = consumer.position([tp])[0].offset
            if position >= high:
                break
            continue
        err = msg.error()
        if err is not None:
            if err.code() in _OFFSET_RESET_CODES:
                raise _Rebootstrap(f"records were deleted while reading: {err}")
            errors("consumer", err)
            continue
        offset = _offset(msg)
        next_offset = offset + 1
        feed(offset, _timestamp(msg, topic), msg.value())
    return low, high


def read_topic(
    bootstrap_servers: str, topic: str, config: Mapping[str, Any] | None = None, timeout: float = _READ_TIMEOUT_S
) -> tuple[int, list[LogRecord]]:
    """Read the whole sync topic as it is now: ``(low watermark, records)`` (undecodable ones as ``None``)."""
    wirelog = _WireLog()
    deadline = time.monotonic() + timeout
    while True:
        consumer = Consumer(_consumer_config(client_config(bootstrap_servers, config), "ckb-read"))
        records: list[LogRecord] = []

        def feed(offset: int, timestamp: int, value: bytes | None, records: list[LogRecord] = records) -> None:
            records.append(LogRecord(offset, timestamp, wirelog.decode(offset, value)))

        try:
            low, _ = _scan(
                consumer,
                topic,
                feed,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            return low, records
        except _Rebootstrap:
            if time.monotonic() >= deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{topic!r} kept being truncated")) from None
        finally:
            consumer.close()


def read_cluster_state(
    bootstrap_servers: str, topic: str, config: Mapping[str, Any] | None = None, timeout: float = _READ_TIMEOUT_S
) -> ClusterState:
    """Rebuild the cluster state from the topic the way a starting node does (latest snapshot plus the rest);
    raise ``ValueError`` if it cannot be known (records that no snapshot covers were deleted)."""
    low, records = read_topic(bootstrap_servers, topic, config, timeout)
    boot = Bootstrap(low)
    for r in records:
        boot.feed(r.offset, r.timestamp, r.record)
    state = boot.finish()
    if state is None:
        raise ValueError(
            f"the sync topic {topic!r} starts at offset {low} and no usable snapshot covers the records before it"
            + (f" ({'; '.join(boot.rejected)})" if boot.rejected else "")
        )
    return state


class KafkaNode:
    """One beat replica: runs the protocol against the sync topic in a background thread.

    ``dispatch`` is called from the node's thread for every tick to publish; when it returns the tick counts as
    published (``core.on_dispatched``), when it raises it is logged and not acknowledged. Keep it short: the node
    does nothing else meanwhile. With ``ack_on_return=False`` the callback only hands the tick over (to another
    thread, say): that thread checks :meth:`may_publish` right before publishing and then reports the outcome
    with :meth:`confirm` or :meth:`abort`; a clean stop waits for those reports before its goodbye.

    ``config`` is extra librdkafka configuration (security and the like) merged into all three clients; its values
    are never logged. ``consumer_config`` and ``producer_config`` are merged last into that one client (tests use
    them to reach the brokers through another listener, e.g. to cut a replica's reads but not its writes).
    ``clock`` returns monotonic milliseconds (tests offset it). The topic is created (or
    validated) by :func:`~celery_kafka_beat.runtime.topic.ensure_topic` with ``replication_factor`` and
    ``min_insync_replicas``.
    """

    def __init__(  # noqa: PLR0917 - the six essentials are positional
        self,
        bootstrap_servers: str,
        topic: str,
        settings: NodeSettings,
        entries: Iterable[str],
        schedule: Schedule,
        dispatch: DispatchCallback,
        *,
        config: Mapping[str, Any] | None = None,
        new_session_id: Callable[[], str] | None = None,
        clock: Callable[[], int] = monotonic_ms,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
        create_topic: bool = True,
        ack_on_return: bool = True,
        consumer_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.topic = topic
        self.entries = frozenset(entries)
        self._schedule = schedule
        self._dispatch = dispatch
        self._base = client_config(bootstrap_servers, config)
        self._new_session_id = new_session_id or (lambda: uuid.uuid4().hex)
        self._clock = clock
        self._replication_factor = replication_factor
        self._min_isr = min_insync_replicas
        self._create_topic = create_topic
        self._ack_on_return = ack_on_return
        self._consumer_extra = dict(consumer_config or {})
        self._producer_extra = dict(producer_config or {})
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._stop_deadline = 0.0
        self._core: NodeCore | None = None
        self._error: BaseException | None = None
        self._errors = _ErrorLog()
        self._wirelog = _WireLog()
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._producer_fatal = False
        self._waiter: Waiter | None = None
        self._fatal: BaseException | None = None  # set by a callback: what retrying cannot fix (a missing ACL)
        self._record_budget = settings.max_record_bytes
        self._delete_denied_at: float | None = None
        self.truncations = 0
        """How many DeleteRecords calls succeeded (for tests and metrics)."""
        self.dispatch_failures = 0

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self.settings.node

    def start(self) -> None:
        """Start the node's thread. Call it in the process that uses the node (never before a ``fork``)."""
        if self._thread is not None:
            raise RuntimeError("KafkaNode.start() called twice")
        self._thread = threading.Thread(target=self._run, name=f"ckb-node-{self.node}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0, *, wait: bool = True) -> bool:
        """Stop cleanly: publish what is decided, say goodbye, wait until it is read back (at most ``timeout``
        seconds), flush the producer. True if the session ended cleanly (or none was live). With ``wait=False``
        only ask for the stop (and return False); :meth:`join` waits for it."""
        thread = self._thread
        if thread is None:
            return True
        if not self._stop_requested.is_set():
            self._stop_deadline = time.monotonic() + timeout
            self._stop_requested.set()
        if not wait or thread is threading.current_thread():
            return False  # from the dispatch callback: the loop ends once the callback returns
        return self.join(timeout + _FLUSH_S + 1.0)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the node's thread to end; True if its session ended cleanly."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        with self._lock:
            core = self._core
            return not thread.is_alive() and (core is None or core.stopped or not core.live)

    @property
    def running(self) -> bool:
        """Whether the node's thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def status(self) -> NodeStatus:
        with self._lock:
            core = self._core
            thread = self._thread
            running = thread is not None and thread.is_alive()
            error = None if self._error is None else f"{type(self._error).__name__}: {self._error}"
            if core is None:
                waiting = self._waiter is not None
                return NodeStatus(self.node, None, False, frozenset(), -1, running, error, waiting)
            session = core.session
            owned = frozenset(core.state.owned.get(session, ())) if session is not None and core.live else frozenset()
            return NodeStatus(self.node, session, core.live, owned, core.state.offset, running, error)

    def ownership_key(self) -> tuple[str | None, bool, int, int]:
        """Changes whenever the entries this node owns may have changed (cheap: no copy of the owned set)."""
        with self._lock:
            core = self._core
            if core is None:
                return None, False, -1, -1
            return core.session, core.live, core.state.granted, core.state.freed

    @property
    def session(self) -> str | None:
        return self.status.session

    @property
    def live(self) -> bool:
        return self.status.live

    @property
    def owned(self) -> frozenset[str]:
        return self.status.owned

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the node's thread (a refused topic configuration, say), if any."""
        return self._error

    def state_json(self) -> str | None:
        """The node's current cluster state as canonical JSON (None before it has read the topic)."""
        with self._lock:
            return None if self._core is None else self._core.state.to_json()

    def may_publish(self, tick: Dispatch) -> bool:
        """Whether ``tick`` (handed to the dispatch callback) may be published now: this node's session is still
        the one that decided it, its lease holds and the log still shows it as the entry's owner."""
        with self._lock:
            core = self._core
            return core is not None and core.can_publish(tick.session, tick.entry, tick.epoch, self._clock())

    def confirm(self, tick: Dispatch, *, flush: bool = True) -> None:
        """``tick`` was published (``ack_on_return=False``): record it in the log at once (even if it was handed
        out under an earlier session of this node: a confirmation is a fact, and spares the next owner a re-send).
        ``flush=False`` only notes it, for a caller publishing a burst of ticks that then calls
        :meth:`flush_confirmations` (one record for the burst instead of one per tick)."""
        with self._lock:
            core = self._core
            if core is None:
                return
            core.on_dispatched(tick.entry, tick.tick, tick.session)
            if flush:
                self._execute(core, core.flush_acks(self._clock()))

    def flush_confirmations(self) -> None:
        """Append the confirmations noted with ``confirm(flush=False)`` now, in one record."""
        with self._lock:
            core = self._core
            if core is not None:
                self._execute(core, core.flush_acks(self._clock()))

    def abort(self, tick: Dispatch) -> None:
        """``tick`` was not published (``ack_on_return=False``); at-least-once mode leaves it to the next owner."""
        with self._lock:
            core = self._core
            if core is not None:
                core.on_dispatch_failed(tick.entry, tick.tick, tick.session)

    def wait_live(self, timeout: float) -> bool:
        """Wait until the node's session is live; False on timeout or if the node's thread ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status
            if status.live:
                return True
            if self._thread is not None and not status.running:
                return False
            time.sleep(0.01)
        return False

    # -- the thread ---------------------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop_requested.is_set()

    def _run(self) -> None:
        try:
            self._admin = AdminClient(dict(self._base))
            self._ensure_topic()
            self._producer = Producer(self._producer_conf())
            while not self._stopping():
                try:
                    self._run_session()
                except _Rebootstrap as exc:
                    log.warning("node %s: %s; reading the topic again", self.node, exc)
                except (TopicConfigError, _Stopped):
                    raise
                except Exception:
                    log.exception("node %s: unexpected error; restarting from the topic", self.node)
                    self._stop_requested.wait(_RETRY_S)
        except _Stopped:
            pass
        except BaseException as exc:
            log.exception("node %s stopped by an error", self.node)
            with self._lock:
                self._error = exc
        finally:
            self._close_producer(flush=True)

    def _ensure_topic(self) -> None:
        assert self._admin is not None
        while True:
            try:
                info = ensure_topic(
                    self._admin,
                    self.topic,
                    self._replication_factor,
                    create=self._create_topic,
                    min_insync_replicas=self._min_isr,
                )
                limit = info.config.get("max.message.bytes", "")
                topic_limit = int(limit) if limit.isdigit() else MAX_MESSAGE_BYTES
                self._record_budget = max(4096, min(topic_limit, MAX_MESSAGE_BYTES) - _RECORD_OVERHEAD)
                return
            except KafkaException as exc:
                log.warning("node %s: cannot check the sync topic yet (%s); retrying", self.node, exc)
                if self._stop_requested.wait(_RETRY_S):
                    raise _Stopped from None

    def _producer_conf(self) -> dict[str, Any]:
        conf = _producer_config(self._base) | self._producer_extra
        conf["error_cb"] = self._on_producer_error
        return conf

    def _on_producer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._producer_fatal = True
            log.error("node %s: fatal producer error: %s", self.node, err)
        else:
            self._errors("producer", err)

    def _on_consumer_error(self, err: KafkaError) -> None:
        # (Not GROUP_AUTHORIZATION_FAILED: no group is joined, a coordinator lookup librdkafka may still make can
        # fail without consequence; see docs/configuration.md.)
        if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            self._fatal = self._fatal or access_error(self.topic, "read", err)
        self._errors("consumer", err)

    def _close_producer(self, *, flush: bool) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        with contextlib.suppress(Exception):
            if flush:
                left = producer.flush(_FLUSH_S)
                if left:
                    log.warning("node %s: %d records not delivered at shutdown", self.node, left)
            else:
                producer.purge()
                producer.flush(0)

    def _run_session(self) -> None:
        """Read the topic, start a session and run it until a stop completes."""
        conf = _consumer_config(self._base, f"ckb-{self.topic}-{self.node}") | self._consumer_extra
        conf["error_cb"] = self._on_consumer_error
        consumer = Consumer(conf)
        try:
            boots: list[Bootstrap] = []

            def feed(offset: int, timestamp: int, value: bytes | None) -> None:
                boots[-1].feed(offset, timestamp, self._wirelog.decode(offset, value), self._clock())

            try:
                low, high = _scan(
                    consumer,
                    self.topic,
                    feed,
                    begin=lambda low, _high: boots.append(Bootstrap(low)),
                    should_stop=self._stopping,
                    errors=self._errors,
                )
            except KafkaException as exc:
                log.warning("node %s: cannot read the sync topic (%s); retrying", self.node, exc)
                if self._stop_requested.wait(_RETRY_S):
                    raise _Stopped from None
                return
            boot = boots[-1]
            state = boot.finish()
            leftover: list[Message] = []
            if state is None:
                state, leftover = self._wait_for_state(boot, low, consumer)
            log.info("node %s: read the sync topic from offset %d to %d", self.node, low, max(high, state.offset + 1))
            core = NodeCore(self.settings, self.entries, self._schedule, self._new_session_id, state)
            core.record_budget = self._record_budget
            with self._lock:
                self._core, self._waiter = core, None
                self._execute(core, core.prime_clock(boot.recent))
                self._execute(core, core.start(self._clock()))
                for msg in leftover:
                    self._on_message(core, msg)
            try:
                self._live_loop(core, consumer)
            except _Rebootstrap:
                with self._lock:
                    self._execute(core, core.abandon(self._clock()))  # a goodbye frees its entries at once
                raise
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _wait_for_state(self, boot: Bootstrap, low: int, consumer: Consumer) -> tuple[ClusterState, list[Message]]:
        """Records that no snapshot covers were deleted: ask for a snapshot (``wait`` records) and keep reading
        until one (or a genesis) arrives; return the state and the records read after it."""
        why = "; ".join(boot.rejected[-3:])
        waiter = Waiter(uuid.uuid4().hex, low, self.settings.lease_ms, why=why)
        with self._lock:
            self._waiter = waiter
            self._execute(None, waiter.start(self._clock()))
        while True:
            if self._stopping():
                raise _Stopped
            self._check_fatal()
            now = self._clock()
            wait_ms = min(max(waiter.next_wakeup(now) - now, 0), _MAX_WAIT_MS)
            msg = consumer.poll(wait_ms / 1000)
            batch = [] if msg is None else [msg, *consumer.consume(max(1, self.settings.max_batch), 0)]
            with self._lock:
                for i, m in enumerate(batch):
                    read = self._read(m)
                    if read is None:
                        continue
                    offset, timestamp, record = read
                    complete = boot.feed(offset, timestamp, record, self._clock())
                    waiter.on_record(offset, timestamp, record, self._clock())
                    if complete and (state := boot.finish()) is not None:
                        log.warning("node %s: rebuilt the schedule state at offset %d", self.node, offset)
                        return state, batch[i + 1 :]
                self._execute(None, waiter.on_timer(self._clock()))
            producer = self._producer
            if producer is not None:
                producer.poll(0)

    def _check_fatal(self) -> None:
        fatal = self._fatal
        if fatal is not None:
            raise fatal

    def _live_loop(self, core: NodeCore, consumer: Consumer) -> None:
        stop_sent = False
        max_batch = max(1, self.settings.max_batch)
        while True:
            now = self._clock()
            if self._stopping() and not stop_sent:
                stop_sent = True
                if not core.live:
                    return
                with self._lock:
                    self._execute(core, core.stop(now))
            if stop_sent and (core.stopped or time.monotonic() >= self._stop_deadline):
                return
            self._check_fatal()
            wait_ms = min(max(core.next_wakeup(now) - now, 0), _MAX_WAIT_MS)
            msg = consumer.poll(wait_ms / 1000)
            batch = [] if msg is None else [msg, *consumer.consume(max_batch, 0)]
            with self._lock:
                for m in batch:
                    self._on_message(core, m)
                self._execute(core, core.on_timer(self._clock()))
            producer = self._producer
            if producer is not None:
                producer.poll(0)
            if self._producer_fatal:
                self._producer_fatal = False
                log.error("node %s: recreating the producer; the current session will lapse", self.node)
                self._close_producer(flush=False)
                self._producer = Producer(self._producer_conf())

    def _read(self, msg: Message) -> tuple[int, int, wire.Record | None] | None:
        """A consumed message as (offset, broker timestamp, record or None if unusable); None for a consumer error
        (logged). Records deleted past this node's position raise :class:`_Rebootstrap`."""
        err = msg.error()
        if err is not None:
            if err.code() in _OFFSET_RESET_CODES:
                raise _Rebootstrap(f"records were deleted past this node's position: {err}")
            self._on_consumer_error(err)
            return None
        offset = _offset(msg)
        return offset, _timestamp(msg, self.topic), self._wirelog.decode(offset, msg.value())

    def _on_message(self, core: NodeCore, msg: Message) -> None:
        read = self._read(msg)
        if read is None or read[0] <= core.state.offset:
            return  # an error, or already folded (a re-fetch after a reconnect)
        offset, timestamp, record = read
        self._execute(core, core.on_record(offset, timestamp, record, self._clock()))

    # -- actions ------------------------------------------------------------------------------------------------

    def _execute(self, core: NodeCore | None, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Append(record):
                    self._produce(record)
                case Dispatch():
                    assert core is not None  # only a core dispatches
                    try:
                        self._dispatch(action)
                    except Exception:
                        self.dispatch_failures += 1
                        core.on_dispatch_failed(action.entry, action.tick)
                        log.exception(
                            "node %s: dispatching %s tick %d failed; not acknowledged",
                            self.node,
                            action.entry,
                            action.tick,
                        )
                    else:
                        if self._ack_on_return:
                            core.on_dispatched(action.entry, action.tick)
                case Truncate(before):
                    self._truncate(before)
                case Note(level, message):
                    log.log(_LEVELS.get(level, logging.INFO), "node %s: %s", self.node, message)

    def _produce(self, record: wire.Record) -> None:
        key, value = wire.encode(record)
        for _ in range(100):
            producer = self._producer
            if producer is None:
                return
            try:
                producer.produce(self.topic, value, key, partition=0, on_delivery=self._on_delivery)
                return
            except BufferError:
                producer.poll(0.01)  # local queue full: let deliveries drain
            except KafkaException as exc:
                self._too_large(exc, len(value))
                log.warning("node %s: cannot append a %s record: %s", self.node, type(record).__name__, exc)
                return
        log.warning("node %s: producer queue stayed full; dropped a %s record", self.node, type(record).__name__)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        denied = access_error(self.topic, "write", err)
        if denied is not None:
            self._fatal = self._fatal or denied
        self._too_large(err, len(msg.value() or b""))
        self._errors("delivery", err)

    def _too_large(self, err: KafkaError | KafkaException, size: int) -> None:
        """A record the topic refused as too large: write smaller ones from now on (retrying the same one never
        succeeds), and say which setting is in the way."""
        error = err if isinstance(err, KafkaError) else (err.args[0] if err.args else None)
        if not isinstance(error, KafkaError) or error.code() not in _TOO_LARGE_CODES:
            return
        budget = max(4096, min(self._record_budget, size) // 2)
        log.error(
            "node %s: Kafka refused a record of %d bytes on sync topic %r as too large (%s): writing records of at "
            "most %d bytes from now on. The topic's max.message.bytes (and the brokers' message.max.bytes) should "
            "be at least %d (kafka-configs.sh --alter --entity-type topics --entity-name %s --add-config "
            "max.message.bytes=%d)",
            self.node,
            size,
            self.topic,
            error.name(),
            budget,
            MAX_MESSAGE_BYTES,
            self.topic,
            MAX_MESSAGE_BYTES,
        )
        self._record_budget = budget
        core = self._core
        if core is not None:
            core.record_budget = budget

    def _truncate(self, before: int) -> None:
        admin = self._admin
        if admin is None:
            return
        denied_at = self._delete_denied_at
        if denied_at is not None and time.monotonic() - denied_at < _DELETE_DENIED_RETRY_S:
            return  # said loudly already; the topic grows until the permission is granted
        try:
            futures = admin.delete_records([TopicPartition(self.topic, 0, before)], operation_timeout=10.0)
        except (KafkaException, ValueError, TypeError) as exc:
            log.warning("node %s: cannot delete records before offset %d: %s", self.node, before, exc)
            return

        def done(future: Future[Any]) -> None:
            exc = future.exception()
            denied = None if exc is None else access_error(self.topic, "delete", exc)
            if denied is not None:
                self._delete_denied_at = time.monotonic()
                log.error(
                    "node %s: cannot delete the records snapshots cover: %s. Until then the topic grows without "
                    "bound and every starting replica reads all of it; trying again in %g minutes",
                    self.node,
                    denied,
                    _DELETE_DENIED_RETRY_S / 60,
                )
            elif exc is not None:
                log.warning("node %s: deleting records before offset %d failed: %s", self.node, before, exc)
            else:
                self.truncations += 1
                log.info("node %s: deleted the records before offset %d (covered by a snapshot)", self.node, before)

        for future in futures.values():
            future.add_done_callback(done)
