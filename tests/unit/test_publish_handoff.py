"""The core's side of a shell that publishes in another thread: fencing right before a publish, and a clean stop
that waits for the shell to report every tick it was handed."""

from __future__ import annotations

from celery_kafka_beat import wire
from celery_kafka_beat.protocol import Action, Append, ClusterState, DeliveryMode, Dispatch, NodeCore, NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.protocol.state import catalog_digest


class Loopback:
    """One node whose appends are read back at once, in order, with the broker clock equal to local time."""

    def __init__(
        self,
        delivery: DeliveryMode = DeliveryMode.AT_LEAST_ONCE,
        entries: int = 1,
        history: list[wire.Record] | None = None,
    ) -> None:
        settings = NodeSettings(node="n1", delivery=delivery)
        names = ["a"] + [f"x{i}" for i in range(1, entries)]
        self.now = 1_000_000
        self.offset = -1
        self.log: list[wire.Record] = []
        state = ClusterState()
        for record in history or []:  # what others wrote before this node started
            self.offset += 1
            self.log.append(record)
            state.apply(self.offset, self.now, record)
        self.core = NodeCore(settings, names, IntervalSchedule(dict.fromkeys(names, 1000)), lambda: "s1", state)
        self.dispatched: list[Dispatch] = []
        self.drop: type[wire.Record] | None = None
        """Appends of this record type are lost."""
        self.auto_report = False
        self.run(self.core.start(self.now))

    def run(self, actions: list[Action]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Append):
                if self.drop is not None and isinstance(action.record, self.drop):
                    continue
                self.offset += 1
                self.log.append(action.record)
                queue += self.core.on_record(self.offset, self.now, action.record, self.now)
            elif isinstance(action, Dispatch):
                self.dispatched.append(action)
                if self.auto_report:
                    self.core.on_dispatched(action.entry, action.tick)

    def advance(self, ms: int) -> None:
        for _ in range(ms // 10):
            self.now += 10
            self.run(self.core.on_timer(self.now))

    def first_tick(self) -> Dispatch:
        while not self.dispatched:
            self.advance(100)
        return self.dispatched[0]


def test_a_handed_over_tick_may_be_published_while_the_lease_holds() -> None:
    node = Loopback()
    tick = node.first_tick()
    assert node.core.can_publish(tick.session, tick.entry, tick.epoch, node.now)
    assert not node.core.can_publish("other", tick.entry, tick.epoch, node.now)
    assert not node.core.can_publish(tick.session, tick.entry, tick.epoch + 1, node.now)
    # Past its own lease (no record renewed it) the node must not publish, even before it notices.
    assert not node.core.can_publish(tick.session, tick.entry, tick.epoch, node.core.lease_deadline + 1)


def test_confirmation_is_logged_at_once_in_at_least_once_mode() -> None:
    node = Loopback()
    tick = node.first_tick()
    node.core.on_dispatched(tick.entry, tick.tick)
    node.run(node.core.flush_acks(node.now))
    published = [r for r in node.log if isinstance(r, wire.Published)]
    assert published
    assert published[-1].items == ((tick.entry, tick.tick),)
    assert node.core.state.entries["a"].published


def test_clean_stop_waits_for_the_shell_to_report_each_handed_over_tick() -> None:
    node = Loopback()
    tick = node.first_tick()
    node.run(node.core.stop(node.now))
    node.advance(500)
    assert not any(isinstance(r, wire.Goodbye) for r in node.log)  # the tick's publish is still outstanding
    node.core.on_dispatched(tick.entry, tick.tick)
    node.advance(100)
    kinds = [type(r).__name__ for r in node.log]
    assert kinds[-2:] == ["Published", "Goodbye"]  # confirmed first, then handed over
    assert node.core.stopped


def test_a_failed_publish_is_left_unconfirmed_for_the_next_owner() -> None:
    node = Loopback()
    tick = node.first_tick()
    node.core.on_dispatch_failed(tick.entry, tick.tick)
    node.run(node.core.stop(node.now))
    node.advance(200)
    assert node.core.stopped
    assert not node.core.state.entries["a"].published  # at-least-once: the next owner publishes it again


def test_an_entry_is_not_released_while_a_tick_of_it_is_with_the_shell() -> None:
    """Found end to end: a node handed a batch of ticks to beat's thread, a second node joined, and the first
    released entries whose ticks were still being published; the release fenced those publishes."""
    node = Loopback(entries=16)
    node.first_tick()
    handed = {d.entry: d for d in node.dispatched}  # none reported yet
    assert len(handed) == 16
    other = wire.Hello(session="s2", seq=1, node="n2", lease_ms=3000, catalog=node.core.catalog)
    node.run([Append(other), Append(wire.Ready(session="s2", seq=2))])
    node.advance(100)
    released = {name for r in node.log if isinstance(r, wire.Release) for name, _ in r.items}
    assert not released  # every entry has a tick with the shell
    for d in handed.values():
        node.core.on_dispatched(d.entry, d.tick)
    node.advance(100)
    released = {name for r in node.log if isinstance(r, wire.Release) for name, _ in r.items}
    assert released  # now the entries the newcomer should own move (the balancer gives it half of 16)


def test_a_claim_given_up_is_never_used_again_even_when_its_release_was_lost() -> None:
    """Found by the simulator: a release was lost, then the entry was wanted back; the node kept a claim it had
    given up (and would not publish under), so the entry was stuck. It must release again and claim afresh."""
    node = Loopback(entries=16)
    node.auto_report = True
    node.first_tick()
    node.advance(200)
    epochs = {name: node.core.state.owner_of(name) for name in node.core.entries}
    node.drop = wire.Release
    hello = wire.Hello(session="s2", seq=1, node="n2", lease_ms=3000, catalog=node.core.catalog)
    node.run([Append(hello), Append(wire.Ready(session="s2", seq=2))])
    node.advance(100)
    given_up = {name for name, _ in node.core._released}
    assert given_up  # the newcomer should own some entries; their releases are lost
    node.drop = None
    node.run([Append(wire.Goodbye(session="s2", seq=2))])  # the newcomer leaves: the entries are wanted back
    node.advance(4000)  # past a lease: the lost releases are noticed
    for name in given_up:
        owner = node.core.state.owner_of(name)
        assert owner is not None
        assert owner[0] == "s1"
        assert owner != epochs[name], f"{name} is still held under the claim that was given up"
        recent = [d for d in node.dispatched if d.entry == name and d.epoch == owner[1]]
        assert recent, f"{name} is not dispatched again under its new claim"


def test_the_next_owner_publishes_again_every_unconfirmed_tick_of_a_batch() -> None:
    """At-least-once: the previous owner decided three ticks in one record (catch-up 'all') and confirmed only the
    first before it ended; the next owner publishes the other two again, with resend set, and not the first."""
    digest, data = catalog_digest(["a"])
    item = wire.DecideItem
    history: list[wire.Record] = [
        wire.CatalogPart(session="s0", seq=1, digest=digest, part=0, parts=1, data=data),
        wire.Hello(session="s0", seq=2, node="n0", lease_ms=3000, catalog=digest),
        wire.Claim(session="s0", seq=3, entries=("a",)),  # offset 2: the epoch
        wire.Decide(
            session="s0",
            seq=4,
            items=(
                item(entry="a", epoch=2, tick=1000),
                item(entry="a", epoch=2, tick=2000),
                item(entry="a", epoch=2, tick=3000),
            ),
            ack=True,
        ),
        wire.Published(session="s0", seq=5, items=(("a", 1000),)),
        wire.Goodbye(session="s0", seq=6),
    ]
    node = Loopback(history=history)
    assert [t for t, _ in node.core.state.entries["a"].unconfirmed] == [2000, 3000]
    node.advance(500)
    resent = sorted(d.tick for d in node.dispatched if d.resend)
    assert resent == [2000, 3000]
    for d in node.dispatched:
        node.core.on_dispatched(d.entry, d.tick)
    node.run(node.core.flush_acks(node.now))
    assert node.core.state.entries["a"].unconfirmed == ()


def test_at_most_once_decisions_leave_nothing_to_publish_again() -> None:
    node = Loopback(delivery=DeliveryMode.AT_MOST_ONCE)
    node.first_tick()
    decides = [r for r in node.log if isinstance(r, wire.Decide)]
    assert decides
    assert not any(r.ack for r in decides)
    assert node.core.state.entries["a"].unconfirmed == ()
