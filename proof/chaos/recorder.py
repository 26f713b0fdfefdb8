"""The recorder: consumes every task message the replicas publish to the Celery broker and logs it as a line of
JSON (``ticks-<group>.jsonl``), before acknowledging it. Nothing else ever reads the queue. And :class:`SyncLog`,
which logs the claims and decisions in a group's sync topic, read back, never written.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer
from kombu import Connection, Consumer, Message, Queue  # type: ignore[attr-defined]

from celery_kafka_beat import wire

__all__ = ["Recorder", "SyncLog", "consume"]


def _iso_ms(value: str) -> int:
    return round(datetime.fromisoformat(value).timestamp() * 1000)


def consume(
    broker_url: str,
    queue: str,
    on_message: Callable[[Any, Message], None],
    *,
    stop: threading.Event,
    ready: threading.Event,
    on_error: Callable[[Exception], None] = lambda exc: None,
) -> None:
    """Consume ``queue`` (JSON messages) until ``stop`` is set, connecting again whenever the Celery broker goes
    away; ``ready`` is set once the first connection stands. ``on_message`` must acknowledge."""
    declared = Queue(queue, routing_key=queue)
    while not stop.is_set():
        try:
            with (
                Connection(broker_url) as conn,
                Consumer(conn, [declared], callbacks=[on_message], accept=["json"]),
            ):
                ready.set()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        continue
        except Exception as exc:  # the broker went away: connect again
            if stop.wait(0.2):
                return
            on_error(exc)


class Recorder:
    """A kombu consumer thread for one queue. Keeps, per entry, the set of ticks seen and the node that sent the
    latest message, which the harness uses to pick "the owner of entry X" as a fault's target."""

    def __init__(self, broker_url: str, queue: str, path: Path) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.path = path
        self.seen: dict[str, set[int]] = {}
        self.last_node: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._out: IO[str] = path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name=f"recorder-{queue}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"the recorder could not connect to the Celery broker at {self.broker_url}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._out.close()

    def _run(self) -> None:
        consume(self.broker_url, self.queue, self._on_message, stop=self._stop, ready=self._ready)

    def _on_message(self, body: Any, message: Message) -> None:
        received = round(time.time() * 1000)
        headers = dict(message.headers)
        try:
            line: dict[str, Any] = {
                "entry": headers["ckb_entry"],
                "tick": _iso_ms(headers["ckb_tick"]),
                "id": headers["id"],
                "node": headers["ckb_node"],
                "epoch": int(headers["ckb_epoch"]),
                "recv": received,
            }
        except (KeyError, ValueError, TypeError) as exc:
            line = {"bad": f"{exc!r}", "headers": {k: str(v) for k, v in headers.items()}, "recv": received}
        with self._lock:
            self._out.write(json.dumps(line) + "\n")
            self._out.flush()
            if "bad" not in line:
                self.seen.setdefault(line["entry"], set()).add(line["tick"])
                self.last_node[line["entry"]] = line["node"]
        message.ack()

    def owner(self, entry: str) -> str | None:
        with self._lock:
            return self.last_node.get(entry)

    def first_ticks(self) -> dict[str, int]:
        with self._lock:
            return {entry: min(ticks) for entry, ticks in self.seen.items() if ticks}

    def latest_ticks(self) -> dict[str, int]:
        with self._lock:
            return {entry: max(ticks) for entry, ticks in self.seen.items() if ticks}

    def missing(self, grids: dict[str, tuple[int, int]], start: int, end: int) -> int:
        """How many ticks in [start, end] are not seen yet; ``grids`` maps entry -> (phase, period) in ms."""
        with self._lock:
            total = 0
            for entry, (phase, period) in grids.items():
                first = start + (phase - start) % period
                seen = self.seen.get(entry, set())
                total += sum(1 for t in range(first, end + 1, period) if t not in seen)
            return total


class SyncLog:
    """Tails a group's sync topic from its start (straight to the brokers, past the proxies) and logs, as JSON
    lines (``sync-<group>.jsonl``), what the checker needs to judge a missing tick exactly: every record's offset,
    broker time (LogAppendTime), session and kind (a record renews its session's lease), and for a hello its node
    and lease, for a claim its entries, for a decide and an expire vote its items, for a wait whether it is a mark,
    for a genesis its stretch; an undecodable record as kind null. A jump in offsets (records
    deleted by the snapshot cleaner before they were read) is logged as ``{"gap": [from, to]}``.

    For the harness's faults it also keeps :attr:`position` (the offset after the last record read) and the sessions
    that said hello and have not ended, with the offset of their latest record (:meth:`sessions`)."""

    def __init__(self, bootstrap: str, topic: str, path: Path) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.position = 0
        self._latest: dict[str, int] = {}  # session -> offset of its latest record (hello seen, no end seen)
        self._lock = threading.Lock()
        self._out: IO[str] = path.open("a", encoding="utf-8")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sync-{topic}", daemon=True)

    def sessions(self, recent: int = 5000) -> dict[str, int]:
        """Sessions seen live whose latest record is among the last ``recent`` offsets read: session -> offset."""
        with self._lock:
            return {s: o for s, o in self._latest.items() if o >= self.position - recent}

    def wait_position(self, offset: int, timeout: float) -> bool:
        """Wait until every record before ``offset`` has been read (and logged); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.position < offset:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.05)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._out.close()

    def _run(self) -> None:
        consumer = KafkaConsumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"ckb-chaos-tail-{self.topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 1000,
                "log_level": 0,  # an observer: the brokers' restarts under test are not its news
            }
        )
        consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        expected: int | None = None
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue  # the topic does not exist yet, or a broker is down: the client retries
                offset = msg.offset()
                if offset is None:
                    continue
                if expected is not None and offset > expected:
                    self._write({"gap": [expected, offset]})
                expected = offset + 1
                self._log(offset, msg.timestamp()[1], msg.value())
                self.position = expected
        finally:
            consumer.close()

    def _log(self, offset: int, ts: int, value: bytes | None) -> None:
        try:
            record = wire.decode(value)
        except wire.WireError:
            self._write({"o": offset, "t": ts, "k": None})  # unusable: only its place in a quiet stretch counts
            return
        line: dict[str, Any] = {"o": offset, "t": ts, "s": record.session, "k": type(record).__name__.lower()}
        self._track(offset, record)
        match record:
            case wire.Hello():
                line |= {"node": record.node, "lease": record.lease_ms, "v": record.version}
            case wire.Claim():
                line |= {"e": list(record.entries)}
            case wire.Release():
                line |= {"i": [list(item) for item in record.items]}
            case wire.Decide():
                line |= {"i": [[i.entry, i.epoch, i.tick] for i in record.items], "a": record.ack}
            case wire.Expire():
                line |= {"i": [list(item) for item in record.items]}
            case wire.Wait():
                line |= {"mark": record.mark}
            case wire.Genesis():
                line |= {"from": record.start, "el": record.elapsed_ms}
        self._write(line)

    def _track(self, offset: int, record: wire.Record) -> None:
        with self._lock:
            match record:
                case wire.Hello():
                    self._latest.setdefault(record.session, offset)
                case wire.Goodbye():
                    self._latest.pop(record.session, None)
                case wire.Expire() if record.session in self._latest:
                    for target, last in record.items:
                        if self._latest.get(target) == last:
                            del self._latest[target]
            if record.session in self._latest:
                self._latest[record.session] = offset
            if len(self._latest) > 1000:  # sessions that vanished unseen (a genesis, deleted records)
                for session in sorted(self._latest, key=self._latest.__getitem__)[:500]:
                    del self._latest[session]

    def _write(self, line: dict[str, Any]) -> None:
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()
