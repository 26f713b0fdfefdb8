"""The time line: follows the brokers' clock, holds a step, adopts it after the hold, joins a peer's hold."""

from __future__ import annotations

from celery_kafka_beat.protocol import BrokerClock, ClockStep

STEP, HOLD = 1000, 60_000
BASE = 1_700_000_000_000  # broker ms at local 0


def _clock() -> BrokerClock:
    return BrokerClock(step_ms=STEP, hold_ms=HOLD)


def _feed(clock: BrokerClock, start: int, end: int, broker_offset: int, *, own: bool = False) -> list[ClockStep]:
    """Records appended every 100 ms (local) with the broker clock at ``BASE + broker_offset``, read 3 ms later."""
    steps = []
    for local in range(start, end, 100):
        ts = BASE + broker_offset + local
        step = clock.observe(ts, local + 3, sent_at=local - 1 if own else None)
        if step is not None:
            steps.append(step)
    return steps


def test_it_follows_the_brokers_clock_as_a_lower_bound() -> None:
    clock = _clock()
    _feed(clock, 0, 1000, 0)
    now = clock.now(1003)
    assert now is not None
    assert BASE + 1000 - 3 <= now <= BASE + 1003


def test_a_step_forward_is_held_then_adopted_after_the_hold() -> None:
    """Reproduced: one record timestamped 60 s ahead (a leader on a fast broker) made ticks go out 60 s early."""
    clock = _clock()
    _feed(clock, 0, 1000, 0, own=True)  # a running node: its own records came back on time
    (step,) = _feed(clock, 1000, 2000, 60_000)
    assert step.by_ms > 59_000
    assert not step.adopted
    assert "60.0 s ahead" in step.describe(42)
    line = clock.now(2003)
    assert line is not None
    assert abs(line - (BASE + 2003)) < 10  # not 60 s ahead
    assert clock.hold(2003) == (line, 2003 - 1003)
    adopted = _feed(clock, 2000, 1000 + HOLD + 200, 60_000)
    assert [s.adopted for s in adopted] == [True]
    assert not clock.holding
    assert clock.hold(HOLD + 2000) is None


def test_a_step_that_goes_back_before_the_hold_costs_nothing() -> None:
    clock = _clock()
    _feed(clock, 0, 1000, 0, own=True)
    _feed(clock, 1000, 30_000, 60_000)  # the leader moved to a broker 60 s fast, for 29 s
    assert clock.holding
    _feed(clock, 30_000, 34_000, 0)  # and back
    assert not clock.holding
    now = clock.now(34_003)
    assert now is not None
    assert abs(now - (BASE + 34_003)) < 10


def test_a_step_back_is_held_too() -> None:
    """Reproduced: after a step back, an entry was silent for as long as the step."""
    clock = _clock()
    _feed(clock, 0, 5000, 0)
    steps = _feed(clock, 5000, 10_000, -60_000, own=True)
    assert len(steps) == 1
    assert steps[0].by_ms < -59_000
    now = clock.now(10_003)
    assert now is not None
    assert abs(now - (BASE + 10_003)) < 10


def test_reading_late_is_not_a_step_back() -> None:
    """A node that reads far behind (a stall, a slow consumer) sees old timestamps, but its own records were
    appended on time: its time line stays where it was."""
    clock = _clock()
    _feed(clock, 0, 5000, 0, own=True)
    for local in range(5000, 9000, 100):  # records appended on time, read 2.5 s late
        assert clock.observe(BASE + local, local + 2500) is None
        clock.observe(BASE + local, local + 2500, sent_at=local - 1)
    assert not clock.holding
    now = clock.now(11_500)
    assert now is not None
    assert abs(now - (BASE + 11_500)) < 10


def test_a_node_starting_during_a_step_joins_its_peers_hold() -> None:
    """A peer holding a step writes [time line, held ms]; a node that has no time line of its own yet takes the
    peer's correction (from that very record: no read latency involved) and the time held, so that both adopt the
    step together."""
    clock = _clock()
    ts = BASE + 60_000 + 1000  # the broker is 60 s ahead; the peer's line is the real time
    (joined,) = [s for s in [clock.observe(ts, 1003, peer_hold=(BASE + 1000, 20_000))] if s is not None]
    assert joined.joined
    assert joined.held_ms == 20_000
    now = clock.now(1003)
    assert now is not None
    assert abs(now - (BASE + 1003)) < 10
    adopted = _feed(clock, 1100, 1000 + HOLD - 20_000 + 500, 60_000)
    assert [s.adopted for s in adopted] == [True]


def test_a_peer_that_is_merely_late_is_not_joined() -> None:
    """A peer that is not holding a step writes no time line; a hold whose correction is within a step is noise."""
    clock = _clock()
    _feed(clock, 0, 1000, 0, own=True)
    assert clock.observe(BASE + 1000, 1003, peer_hold=(BASE + 1000 - 500, 5000)) is None
    assert not clock.holding


def test_a_second_step_during_a_hold_restarts_the_hold() -> None:
    """A leader moving again while a step is held (to a broker whose clock is off the other way) is a new step:
    it is adopted only if it, too, lasts the whole hold."""
    clock = _clock()
    _feed(clock, 0, 1000, 0, own=True)
    _feed(clock, 1000, 40_000, -60_000, own=True)  # held 39 s
    _feed(clock, 40_000, 1000 + HOLD + 1000, 70_000)  # another broker, +70 s: 22 s so far
    assert clock.holding
    now = clock.now(1000 + HOLD + 1003)
    assert now is not None
    assert abs(now - (BASE + 1000 + HOLD + 1003)) < 10
    adopted = _feed(clock, 1000 + HOLD + 1000, 40_000 + HOLD + 200, 70_000)
    assert [s.adopted for s in adopted] == [True]


def test_a_time_line_built_from_records_read_late_catches_up_without_a_step() -> None:
    """Reproduced (soak): a node rebuilt its state from records a broker stall had held back, read them 1.2 s late,
    then took the next fresh record for a step forward and held it; its peers joined the hold and every tick went
    out 1.2 to 2.6 s late. With none of its own records back yet, a time line that is behind only catches up."""
    clock = _clock()
    for local in range(0, 2000, 100):  # appended on time, read 1.2 s late
        assert clock.observe(BASE + local, local + 1200) is None
    assert _feed(clock, 2000, 3000, 0) == []
    assert not clock.holding
    now = clock.now(3003)
    assert now is not None
    assert abs(now - (BASE + 3003)) < 10


def test_a_step_forward_before_the_nodes_first_own_record_is_followed_until_a_peer_shows_its_hold() -> None:
    """A node whose own records have not come back yet runs no tick: it follows the brokers' clock, and a ready
    peer that holds the step brings it onto the held time line with its next record."""
    clock = _clock()
    _feed(clock, 0, 1000, 0)
    assert _feed(clock, 1000, 1500, 60_000) == []
    (joined,) = [s for s in [clock.observe(BASE + 60_000 + 1500, 1503, peer_hold=(BASE + 1500, 500))] if s]
    assert joined.joined
    now = clock.now(1503)
    assert now is not None
    assert abs(now - (BASE + 1503)) < 10


def test_a_step_that_ends_while_the_time_line_was_behind_is_not_a_new_step() -> None:
    """Reproduced (simulator): a node whose time line was 1.2 s behind (it read late; its own records said so) held
    a step of the leader's clock; when the leader's clock came back, the 1.2 s looked like a new step, was held and
    adopted 20 s later, its peers joined that hold, and ticks went out 1.1 s late."""
    clock = _clock()
    for local in range(0, 3000, 100):  # read 1.2 s late, own records appended on time
        clock.observe(BASE + local, local + 1200, sent_at=local - 1)
    line = clock.now(3000)
    assert line is not None
    assert line < BASE + 3000 - 1000  # behind: it has not caught up yet
    (step,) = _feed(clock, 3000, 4000, 60_000)
    assert not step.adopted
    assert _feed(clock, 4000, 5000, 0, own=True) == []  # the step is over; the 1.2 s is a catch-up
    assert not clock.holding
    now = clock.now(5003)
    assert now is not None
    assert abs(now - (BASE + 5003)) < 10


def test_a_peers_hold_written_before_the_step_ended_is_not_joined_by_a_node_that_saw_it_end() -> None:
    """Reproduced (simulator): the leader's clock came back; a peer's record written while it still held the step
    was appended 1.5 s after the peer took its time line (a slow append), so its line read as 1.5 s behind the
    brokers' clock. Nodes that had just ended their own hold joined that 'step', and ticks went out late."""
    clock = _clock()
    _feed(clock, 0, 1000, 0, own=True)
    _feed(clock, 1000, 5000, -60_000, own=True)
    assert clock.holding
    _feed(clock, 5000, 6000, 0, own=True)
    assert not clock.holding
    assert clock.observe(BASE + 6000, 6003, peer_hold=(BASE + 6000 - 1500, 4000)) is None
    assert not clock.holding
    now = clock.now(6003)
    assert now is not None
    assert abs(now - (BASE + 6003)) < 10


def test_a_starting_node_joins_a_step_back_its_peers_hold_when_its_own_record_comes_back() -> None:
    """The records read while starting: older ones stamped before a step back (they outweigh the newer in the
    estimate), newer ones by the broker 60 s behind, from a ready peer holding the step. The node joins when its
    first own record comes back, on the held (true) line."""
    clock = _clock()
    before = [(BASE + t, 3500, True, None) for t in range(0, 1000, 100)]
    during = [(BASE - 60_000 + t, 3500, True, (BASE + t, t - 1000)) for t in range(1000, 3000, 500)]
    clock.prime(before + during, max_age_ms=1000)
    assert clock.join_pending
    (joined,) = [s for s in [clock.observe(BASE - 60_000 + 3501, 3504, sent_at=3500)] if s is not None]
    assert joined.joined
    now = clock.now(3504)
    assert now is not None
    assert abs(now - (BASE + 3504)) < 10


def test_a_starting_node_does_not_join_a_hold_whose_step_ended_before_its_own_record_came_back() -> None:
    clock = _clock()
    clock.prime([(BASE + 60_000 + t, 2000, True, (BASE + t, 5000)) for t in range(1000, 2000, 200)], max_age_ms=1000)
    assert clock.join_pending
    assert clock.observe(BASE + 2001, 2004, sent_at=2000) is None  # the leader's clock is the true one again
    assert not clock.holding
    now = clock.now(2004)
    assert now is not None
    assert abs(now - (BASE + 2004)) < 10


def test_a_hold_that_the_peers_latest_record_no_longer_carries_is_not_joined() -> None:
    clock = _clock()
    held = [(BASE + 60_000 + t, 2000, True, (BASE + t, 5000)) for t in range(1000, 1800, 200)]
    clock.prime([*held, (BASE + 61_900, 2000, True, None)], max_age_ms=1000)
    assert not clock.join_pending


def test_a_joined_hold_whose_peer_read_late_ends_with_the_step() -> None:
    """Reproduced (simulator): a node joined the hold of a peer whose time line was a second behind (it had read
    late); when the leader's clock came back, that second looked like a step of its own, was held, joined by the
    others and adopted a hold later: ticks a second late. A joined line within two steps behind the brokers' clock
    when a step ends catches up."""
    clock = _clock()
    peer_line = BASE + 1000 - 1500  # the peer's line, 1.5 s behind
    (joined,) = [s for s in [clock.observe(BASE + 60_000 + 1000, 1003, peer_hold=(peer_line, 5000))] if s]
    assert joined.joined
    assert _feed(clock, 1100, 3000, 60_000, own=True) == []
    assert _feed(clock, 3000, 4000, 0, own=True) == []  # the step ends: 1.5 s ahead of the joined line
    assert not clock.holding
    now = clock.now(4003)
    assert now is not None
    assert abs(now - (BASE + 4003)) < 10
