"""``KafkaScheduler``: the Celery beat scheduler that runs on every replica and coordinates through one Kafka topic.

Use it with ``celery beat -S celery_kafka_beat.KafkaScheduler`` (or ``-S kafka``), or
``celery worker -B --scheduler kafka`` (on ``worker``, ``-S`` is ``--statedb``).
It is a thin shell: the schedule comes from ``beat_schedule`` as usual, the protocol core decides which replica
owns which entry and which ticks to publish, and this class publishes a tick's task when the core hands it over.

Threads: the Kafka node runs in its own thread (heartbeats go on while a task is being published). It hands each
due tick to beat's main thread through a queue; :meth:`KafkaScheduler.tick` waits on that queue, so beat wakes the
moment a tick is due (not after a ``max_interval`` sleep). Right before publishing, the main thread checks that the
node still holds the entry's lease (:meth:`KafkaNode.may_publish`), then reports the outcome (``confirm`` /
``abort``), which in at-least-once mode is recorded in the log at once.

Processes: nothing connects before :meth:`setup_schedule`, which Celery calls in the process that runs beat (the
forked child with ``worker -B``); the banner's ``lazy=True`` instance never connects.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Final

from celery.beat import Scheduler, _evaluate_entry_args, _evaluate_entry_kwargs

from celery_kafka_beat.celery_schedules import CelerySchedules, UnsupportedSchedule
from celery_kafka_beat.config import ConfigError, KafkaBeatConfig
from celery_kafka_beat.protocol import DeliveryMode, Dispatch
from celery_kafka_beat.runtime.kafka import KafkaNode

__all__ = ["HEADER_ENTRY", "HEADER_EPOCH", "HEADER_NODE", "HEADER_TICK", "KafkaScheduler", "tick_task_id"]

log = logging.getLogger(__name__)

#: Message headers every dispatched task carries (visible as ``self.request.<name>`` in the task).
HEADER_ENTRY: Final = "ckb_entry"
HEADER_TICK: Final = "ckb_tick"
HEADER_NODE: Final = "ckb_node"
HEADER_EPOCH: Final = "ckb_epoch"

#: uuid5 namespace of tick task ids (a fixed random uuid: ids never collide with uuid4 ids).
_TASK_ID_NAMESPACE: Final = uuid.UUID("8d0b6c4e-3c1f-4f49-9d62-5b8a1f0e2a77")
# Why 1 s: the longest tick() waits for a due tick before returning to beat's loop, which then notices a
# shutdown and checks the node's health.
_WAIT_S: Final = 1.0
# Why 1 s: pause between publish attempts of a tick that failed to publish (at-least-once mode).
_RETRY_S: Final = 1.0
# Why 50: the ownership log line names at most this many entries (100,000 names would be a megabyte a line).
_OWNED_LISTED: Final = 50
# Why 20 ticks in 0.1 s (200 ticks/s): below that a replica confirms each tick at once, as cheap as it gets for
# the re-send window; above it, confirmations share records (each record costs every replica a fold), at least
# every 200 ticks or 20 ms, which keeps the window in which a crash leaves a published tick unconfirmed (and
# re-sent by the next owner) short.
_BUSY_CONFIRMS: Final = 20
_BUSY_WINDOW_S: Final = 0.1
_CONFIRM_EVERY: Final = 200
_CONFIRM_S: Final = 0.02
# Why 10 s: how long a clean shutdown may take to publish what is decided and hand its entries over.
_STOP_TIMEOUT_S: Final = 10.0


def tick_task_id(topic: str, entry: str, tick_ms: int) -> str:
    """The Celery task id of a tick: the same entry, tick and sync topic always give the same id."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{topic}\x00{entry}\x00{tick_ms}"))


def tick_iso(tick_ms: int) -> str:
    """A tick as ISO 8601 UTC with milliseconds, e.g. ``2026-11-29T03:00:00.000+00:00``."""
    return datetime.fromtimestamp(tick_ms / 1000, UTC).isoformat(timespec="milliseconds")


class _Fenced(Exception):
    """The node lost the entry while the tick's message was being built: it must not go out."""


class _FencedProducer:
    """Celery's producer, with one more check right before the tick's message is sent: the last fencing check.

    Everything Celery runs before it sends (lazy beat arguments, a task class's own ``apply_async``, routers,
    ``before_task_publish`` handlers) may take long; the lease is checked again after all of it. Only the first
    ``publish`` is the task message: a ``task-sent`` event that Celery sends through the same producer after it
    passes unchecked (the task is out by then)."""

    def __init__(self, producer: Any, may_publish: Any) -> None:
        self._producer = producer
        self._may_publish = may_publish
        self._checked = False

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        if not self._checked:
            self._checked = True
            if not self._may_publish():
                raise _Fenced
        return self._producer.publish(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class KafkaScheduler(Scheduler):  # type: ignore[misc]  # Celery is untyped
    """Celery beat scheduler whose replicas share entries through one Kafka topic; see the module docstring."""

    node_options: Mapping[str, Any] = {}
    """Extra keyword arguments for :class:`KafkaNode` (a subclass's hook; the fault-testing harness uses it)."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._config: KafkaBeatConfig | None = None
        self._node: KafkaNode | None = None
        self._ticks: queue.SimpleQueue[Dispatch | None] = queue.SimpleQueue()
        self._retry: list[tuple[float, Dispatch]] = []
        self._pid = os.getpid()
        self._terminating = threading.Event()
        self._closed = False
        self._owned_logged: frozenset[str] | None = None
        self._ownership_key: tuple[str | None, bool, int, int] | None = None
        self._unflushed = 0  # ticks published and confirmed to the node, not yet appended to the log
        self._unflushed_since = 0.0
        self._recent: collections.deque[float] = collections.deque()  # publish times within _BUSY_WINDOW_S
        super().__init__(app, *args, **kwargs)

    # -- set-up -------------------------------------------------------------------------------------------------

    @property
    def config(self) -> KafkaBeatConfig:
        """The validated settings (read on first use; raises :class:`ConfigError`)."""
        if self._config is None:
            self._config = KafkaBeatConfig.from_conf(self.app.conf)
        return self._config

    def setup_schedule(self) -> None:
        config = self.config
        # Merge first, then add Celery's default entries (as PersistentScheduler does: the base class's order
        # lets the merge drop them again).
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.schedule)
        try:
            schedules = CelerySchedules({name: entry.schedule for name, entry in self.schedule.items()})
        except UnsupportedSchedule as exc:
            raise ConfigError(f"beat_schedule: {exc}") from None
        self._node = KafkaNode(
            config.bootstrap_servers,
            config.topic,
            config.node_settings(),
            list(self.schedule),
            schedules,
            self._ticks.put,
            config=config.client_config,
            replication_factor=config.replication_factor,
            min_insync_replicas=config.min_insync_replicas,
            create_topic=config.create_topic,
            ack_on_return=False,
            **self.node_options,
        )
        self._install_signal_handlers()
        self._pid = os.getpid()
        log.info(
            "KafkaScheduler: node %s joining topic %s at %s with %d entries",
            config.node_name,
            config.topic,
            config.bootstrap_servers,
            len(self.schedule),
        )
        self._node.start()

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end beat's loop from :meth:`tick` (not from inside the handler), so that the clean
        stop in :meth:`close` runs in ordinary code: it publishes what is decided and hands the entries over at
        once. Celery's own handler would do the stop inside the signal handler; the embedded beat of
        ``worker -B`` would have none at all and die without handing over."""
        if threading.current_thread() is not threading.main_thread():
            return  # beat in a thread (worker -B with a threaded service): the worker stops it
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._terminating.set()
        self._ticks.put(None)  # wake tick()

    # -- the beat loop ------------------------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Publish the ticks the node hands over; wait for one (at most a second) when there is none."""
        if self._terminating.is_set():
            raise SystemExit(0)  # beat's loop catches it and calls close() through Service.sync()
        node = self._running_node()
        key = node.ownership_key()
        if key != self._ownership_key:  # copying 100,000 names on every tick would cost more than publishing
            self._ownership_key = key
            self._log_ownership(node)
        wait = min(_WAIT_S, float(self.max_interval or _WAIT_S))
        if self._retry:
            wait = max(0.0, min(wait, self._retry[0][0] - time.monotonic()))
        if self._unflushed:
            wait = max(0.0, min(wait, self._unflushed_since + _CONFIRM_S - time.monotonic()))
        try:
            item = self._ticks.get(timeout=wait)
        except queue.Empty:
            item = None
        while item is not None:
            if self._publish(node, item, flush=False):
                at = time.monotonic()
                if not self._unflushed:
                    self._unflushed_since = at
                self._unflushed += 1
                self._recent.append(at)
                while self._recent[0] < at - _BUSY_WINDOW_S:
                    self._recent.popleft()
            self._flush_confirmations(node)
            try:
                item = self._ticks.get_nowait()
            except queue.Empty:
                item = None
        self._flush_confirmations(node)
        self._publish_retries(node)
        if self._terminating.is_set():
            raise SystemExit(0)
        return 0.0

    def _running_node(self) -> KafkaNode:
        node = self._node
        if node is None:
            raise RuntimeError("KafkaScheduler.tick() called on a lazy scheduler (setup_schedule() never ran)")
        if os.getpid() != self._pid:
            raise RuntimeError(
                "KafkaScheduler was set up in another process and then forked: create it in the process that runs "
                "beat (Celery does this for `celery beat` and `celery worker -B`)"
            )
        error = node.error
        if error is not None:
            raise ConfigError(f"KafkaScheduler cannot run: {error}")
        return node

    def _log_ownership(self, node: KafkaNode) -> None:
        status = node.status
        owned = status.owned if status.live else frozenset()
        if owned != self._owned_logged:
            self._owned_logged = owned
            names = sorted(owned)
            listed = ", ".join(names[:_OWNED_LISTED]) or "none"
            if len(names) > _OWNED_LISTED:
                listed += f" and {len(names) - _OWNED_LISTED} more"
            log.info(
                "KafkaScheduler: node %s owns %d of %d entries: %s", node.node, len(owned), len(self.schedule), listed
            )

    # -- publishing ---------------------------------------------------------------------------------------------

    def _publish(self, node: KafkaNode, tick: Dispatch, *, flush: bool = True) -> bool:
        """Publish one tick; True if it went out (confirmed, in the log at once unless ``flush`` is False)."""
        entry = self.schedule.get(tick.entry)
        if entry is None:
            node.abort(tick)
            return False
        if not node.may_publish(tick):
            log.warning(
                "KafkaScheduler: tick %s of %s not published: this node no longer holds the entry",
                tick_iso(tick.tick),
                tick.entry,
            )
            node.abort(tick)
            return False
        try:
            producer = _FencedProducer(self.producer, lambda: node.may_publish(tick))  # connects (and retries)
            result = self._send(entry, tick, producer)
        except _Fenced:
            log.warning(
                "KafkaScheduler: tick %s of %s not published: this node lost the entry while the message was being "
                "prepared",
                tick_iso(tick.tick),
                tick.entry,
            )
            node.abort(tick)
            return False
        except Exception as exc:
            self._reset_connection()
            if self.config.delivery is DeliveryMode.AT_LEAST_ONCE and self._closed:
                log.error(
                    "KafkaScheduler: publishing %s tick %s failed (%s) while stopping; the next owner publishes it",
                    tick.entry,
                    tick_iso(tick.tick),
                    exc,
                )
                node.abort(tick)
            elif self.config.delivery is DeliveryMode.AT_LEAST_ONCE:
                log.error(
                    "KafkaScheduler: publishing %s tick %s failed (%s); retrying in %g s while this node owns it",
                    tick.entry,
                    tick_iso(tick.tick),
                    exc,
                    _RETRY_S,
                )
                self._retry.append((time.monotonic() + _RETRY_S, tick))
                self._retry.sort(key=lambda item: item[0])
            else:
                log.error(
                    "KafkaScheduler: publishing %s tick %s failed (%s); the tick is lost (delivery at-most-once)",
                    tick.entry,
                    tick_iso(tick.tick),
                    exc,
                    exc_info=True,
                )
                node.abort(tick)
            return False
        node.confirm(tick, flush=flush)
        entry.last_run_at = datetime.fromtimestamp(tick.tick / 1000, UTC)
        entry.total_run_count += 1
        log.info(
            "Scheduler: Sending due task %s (%s) tick %s id %s%s",
            tick.entry,
            entry.task,
            tick_iso(tick.tick),
            getattr(result, "id", "?"),
            " (again: its owner died before confirming it)" if tick.resend else "",
        )
        return True

    def _flush_confirmations(self, node: KafkaNode, *, now: bool = False) -> None:
        """Append the confirmations of published ticks. A replica publishing fewer than _BUSY_CONFIRMS ticks per
        _BUSY_WINDOW_S confirms each at once. A busy one lets them gather (one record for many ticks, which every
        replica folds) until _CONFIRM_EVERY are waiting or the oldest has waited _CONFIRM_S: a crash in between
        makes the next owner publish those ticks again (at-least-once), so the wait stays short."""
        if not self._unflushed:
            return
        busy = len(self._recent) >= _BUSY_CONFIRMS
        if (
            now
            or not busy
            or self._unflushed >= _CONFIRM_EVERY
            or time.monotonic() - self._unflushed_since >= _CONFIRM_S
        ):
            node.flush_confirmations()
            self._unflushed = 0

    def _publish_retries(self, node: KafkaNode) -> None:
        now = time.monotonic()
        while self._retry and self._retry[0][0] <= now:
            _, tick = self._retry.pop(0)
            if node.may_publish(tick):
                self._publish(node, tick)
            else:
                node.abort(tick)  # the next owner publishes it again (at-least-once)

    def _send(self, entry: Any, tick: Dispatch, producer: Any) -> Any:
        config = self.config
        options = dict(entry.options)
        headers = dict(options.get("headers") or {})
        headers.update(
            {
                "celery_beat_task": True,
                HEADER_ENTRY: tick.entry,
                HEADER_TICK: tick_iso(tick.tick),
                HEADER_NODE: config.node_name,
                HEADER_EPOCH: tick.epoch,
            }
        )
        options.update(headers=headers, task_id=tick_task_id(config.topic, tick.entry, tick.tick), retry=False)
        args = _evaluate_entry_args(entry.args)
        kwargs = _evaluate_entry_kwargs(entry.kwargs)
        task = self.app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(args, kwargs, producer=producer, **options)
        return self.send_task(entry.task, args, kwargs, producer=producer, **options)

    def _reset_connection(self) -> None:
        """Drop the Celery broker connection after a failed publish; the next one reconnects."""
        self.__dict__.pop("producer", None)
        connection = self.__dict__.pop("connection", None)
        if connection is not None:
            try:
                connection.release()
            except Exception:  # the connection is broken anyway
                log.debug("KafkaScheduler: releasing a broken connection failed", exc_info=True)

    # -- shutdown -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the node cleanly (once): publish the ticks already decided, say goodbye so that the other replicas
        take the entries over at once, then release the Celery connection."""
        node = self._node
        if not self._closed and node is not None and os.getpid() == self._pid:
            self._closed = True
            # Ticks waiting to be published again (the Celery broker refused them) are left to the next owner (it
            # publishes them again in at-least-once mode): the goodbye waits for every tick handed out, and these
            # would hold it back for the whole stop timeout, then leave the entries to lapse with the lease.
            for _, tick in self._retry:
                node.abort(tick)
            self._retry.clear()
            self._flush_confirmations(node, now=True)
            node.stop(_STOP_TIMEOUT_S, wait=False)
            deadline = time.monotonic() + _STOP_TIMEOUT_S + 1.0
            while node.running and time.monotonic() < deadline:
                try:
                    item = self._ticks.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is not None:
                    self._publish(node, item)
            for _, tick in self._retry:  # a publish that failed during the stop
                node.abort(tick)
            self._retry.clear()
            clean = node.join(1.0)
            log.info("KafkaScheduler: node %s stopped%s", node.node, "" if clean else " (its lease will lapse)")
        super().close()

    # -- introspection ------------------------------------------------------------------------------------------

    @property
    def info(self) -> str:
        lines = [f"kafka-beat: {label} -> {value}" for label, value in self.config.describe()]
        node = self._node
        if node is None:
            lines.append("kafka-beat: owned -> shared out once the node is live (logged as it changes)")
        else:
            owned = node.owned
            lines.append(f"kafka-beat: owned -> {len(owned)}: {', '.join(sorted(owned)) or 'none yet'}")
        return "\n".join(f"    . {line}" for line in lines)
