"""KafkaScheduler's publish path without Kafka (a fake node, Celery's in-memory broker): the last fencing check
runs right before the message is sent, and a clean stop does not wait for ticks that keep failing to publish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.beat import BeatLazyFunc
from celery.signals import after_task_publish, before_task_publish

from celery_kafka_beat import KafkaScheduler
from celery_kafka_beat.protocol import Dispatch

TICK = Dispatch(entry="job", tick=1_796_000_000_000, session="s1", epoch=7)


class FakeNode:
    """What KafkaScheduler asks of its node; ``holds`` says whether the lease still holds."""

    def __init__(self) -> None:
        self.holds = True
        self.calls: list[str] = []

    def may_publish(self, tick: Dispatch) -> bool:
        self.calls.append("may_publish")
        return self.holds

    def confirm(self, tick: Dispatch, *, flush: bool = True) -> None:
        self.calls.append("confirm")

    def abort(self, tick: Dispatch) -> None:
        self.calls.append("abort")

    def flush_confirmations(self) -> None:
        self.calls.append("flush")

    def stop(self, timeout: float, *, wait: bool = True) -> bool:
        self.calls.append("stop")
        return False

    @property
    def running(self) -> bool:
        return False

    def join(self, timeout: float) -> bool:
        return True

    @property
    def node(self) -> str:
        return "fake"


@pytest.fixture
def receivers() -> Iterator[list[tuple[Any, Callable[..., None]]]]:
    """Signal receivers a test connects; disconnected at the end."""
    connected: list[tuple[Any, Callable[..., None]]] = []
    yield connected
    for signal, receiver in connected:
        signal.disconnect(receiver)


def _scheduler(
    receivers: list[tuple[Any, Callable[..., None]]], args: Any = ()
) -> tuple[KafkaScheduler, FakeNode, list[str]]:
    app = Celery("unit", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        kafka_beat_bootstrap_servers="127.0.0.1:9",  # nothing listens: nothing may connect to Kafka
        task_send_sent_event=True,  # a task-sent event goes through the same producer, after the task
        beat_schedule={"job": {"task": "unit.job", "schedule": 60.0, "args": args}},
    )
    scheduler = KafkaScheduler(app, lazy=True)
    scheduler.merge_inplace(app.conf.beat_schedule)
    node = FakeNode()
    scheduler._node = node  # what setup_schedule would start
    sent: list[str] = []

    def published(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers and headers.get("ckb_entry") == "job":
            sent.append(str(headers["id"]))

    after_task_publish.connect(published, weak=False)
    receivers.append((after_task_publish, published))
    return scheduler, node, sent


def test_a_tick_goes_out_while_the_lease_holds(receivers: list[tuple[Any, Callable[..., None]]]) -> None:
    scheduler, node, sent = _scheduler(receivers)
    assert scheduler._publish(node, TICK)  # type: ignore[arg-type]
    assert len(sent) == 1
    assert node.calls[-1] == "confirm"


def test_a_lease_lost_while_publish_hooks_run_stops_the_message(
    receivers: list[tuple[Any, Callable[..., None]]],
) -> None:
    """Reproduced: lazy beat arguments and apply_async hooks ran after the last fencing check, so a lease that
    lapsed meanwhile (a slow hook, a GC pause) did not stop the publish."""
    scheduler, node, sent = _scheduler(receivers)

    def slow_hook(**_: Any) -> None:
        node.holds = False  # the lease lapsed while a hook ran

    before_task_publish.connect(slow_hook, weak=False)
    receivers.append((before_task_publish, slow_hook))
    assert not scheduler._publish(node, TICK)  # type: ignore[arg-type]
    assert sent == []
    assert node.calls[-1] == "abort"


def test_a_lease_lost_while_lazy_arguments_are_evaluated_stops_the_message(
    receivers: list[tuple[Any, Callable[..., None]]],
) -> None:
    node_box: list[FakeNode] = []

    def lazy() -> str:
        node_box[0].holds = False
        return "evaluated"

    scheduler, node, sent = _scheduler(receivers, args=(BeatLazyFunc(lazy),))
    node_box.append(node)
    assert not scheduler._publish(node, TICK)  # type: ignore[arg-type]
    assert sent == []
    assert "abort" in node.calls


def test_a_clean_stop_leaves_failing_publishes_to_the_next_owner_before_it_stops(
    receivers: list[tuple[Any, Callable[..., None]]],
) -> None:
    """Reproduced: a clean stop with a publish retry pending sent no goodbye (the node waits for every tick handed
    out): 10 s of heartbeats, then a lease-long wait for the others."""
    scheduler, node, _ = _scheduler(receivers)
    scheduler._retry.append((0.0, TICK))
    scheduler.close()
    assert node.calls.index("abort") < node.calls.index("stop")
    assert scheduler._retry == []
