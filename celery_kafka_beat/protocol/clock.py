"""A node's estimate of the brokers' clock (its *time line*): when ticks are due. Pure: every call takes ``now``.

Ticks are due by the brokers' clock, read from the ``LogAppendTime`` of the records a node reads: a record is
appended before it is read, so ``timestamp - local read time`` is a lower bound of the offset between the broker's
clock and the node's monotonic clock. The largest of the last ``samples`` is the estimate: never ahead of the
broker, at most late by the read latency. A node's own records give an upper bound too: a record is appended after
it is sent, so ``timestamp - local send time`` is at least the offset. A node reading far behind sees its lower
bounds sag while its upper bounds do not; only a broker clock that went back lowers both.

That clock belongs to whichever broker leads the sync topic's partition. A leader moving to a broker whose clock
is off, or an NTP step, moves it at once by seconds or minutes. Followed blindly, a step forward would run every
tick in between at once (early) and a step back would stop every entry for as long. So a change of more than
``step_ms`` is a **step**: the node says so, keeps its time line (its monotonic clock carries it on), and adopts
the broker's clock only if the step is still there after ``hold_ms``.

While it holds a step, a node writes ``[time line, ms held]`` in every record (``w``). A node that is not holding
one (it started during the step, or missed it) and reads such a record from a ready peer that is current (its
timestamp is the latest clock reading) joins the hold: it takes the peer's correction to the broker's clock
(``time line - timestamp`` of that very record, so neither the peer's nor its own read latency matters) and the
time already held, so that it adopts the step when the peer does. A starting node looks for such a hold in the
records it read while starting (``prime``) and joins it when its own first record comes back, before it can claim
anything; a node that starts with no peer holding takes the broker's clock as its first own record shows it. Leases
never depend on any of this (see ``state.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

#: How many recent records the estimate looks back over: enough to contain one read soon after its append (a
#: tight bound), few enough to follow a drift within seconds.
SAMPLES: Final = 32


@dataclass(frozen=True, slots=True)
class ClockStep:
    """What the estimator noticed: a step begins (held), is joined from a peer, or is adopted."""

    by_ms: int
    """How far the broker's clock is from the time line (positive: ahead)."""
    adopted: bool
    held_ms: int = 0
    joined: bool = False

    def describe(self, offset: int) -> str:
        way = "ahead of" if self.by_ms > 0 else "behind"
        size = f"{abs(self.by_ms) / 1000:.1f} s"
        if self.adopted:
            return (
                f"the brokers' clock has stayed {size} {way} this node's time line for {self.held_ms / 1000:.0f} s "
                f"(record at offset {offset}): adopting it; ticks in between follow the catch-up policy"
            )
        if self.joined:
            return (
                f"the other replicas are holding a broker clock step: the brokers' clock is {size} {way} their time "
                f"line (record at offset {offset}, held for {self.held_ms / 1000:.0f} s); keeping to their time line"
            )
        return (
            f"broker clock step: the record at offset {offset} is timestamped {size} {way} this node's time line "
            "(a partition leader moved to a broker with another clock, or a broker's clock was stepped); keeping "
            "the time line, so ticks neither run early nor stop; check NTP on the brokers"
        )


class BrokerClock:
    """The time line: ``now(local) -> broker ms``. Feed it every record read (:meth:`observe`)."""

    def __init__(self, *, step_ms: int, hold_ms: int, samples: int = SAMPLES) -> None:
        self.step_ms = step_ms
        self.hold_ms = hold_ms
        self._samples: deque[int] = deque(maxlen=samples)
        self._uppers: deque[int] = deque(maxlen=samples)
        self._offset: int | None = None
        self._step_since: int | None = None
        self._step_to: int = 0  # the broker offset the step held went to: another step restarts the hold
        self._step_upper: int | None = None  # the least upper bound when the step began (None for a joined hold)
        # A hold found at start-up: (correction, held, read at, the record's sample, the most it may have aged).
        self._pending: tuple[int, int, int, int, int] | None = None
        self._provisional = False  # a line started from the records read at start-up, until an own record is read
        self._step_joined = False  # whether the step held is a peer's, joined
        self._judged_at: int | None = None  # when this node last ended a hold of its own (adopted, or the step ended)
        self.steps = 0
        """Steps noticed or joined (for tests and metrics)."""

    @property
    def holding(self) -> bool:
        """Whether a step is being held (the time line disagrees with the broker's clock)."""
        return self._step_since is not None

    def hold(self, now: int) -> tuple[int, int] | None:
        """``[time line, ms held]`` for this node's records while it holds a step, else None."""
        if self._step_since is None or self._offset is None:
            return None
        return now + self._offset, now - self._step_since

    @property
    def provisional(self) -> bool:
        """Whether the line still comes from the records read at start-up (until this node's first own record)."""
        return self._provisional

    @property
    def join_pending(self) -> bool:
        """Whether a peer's hold found in the records read at start-up waits for this node's first own record."""
        return self._pending is not None

    def prime(self, recent: list[tuple[int, int, bool, tuple[int, int] | None]], max_age_ms: int) -> None:
        """Records read while starting, ``(timestamp, read at, whether a ready peer wrote it, its hold)``: their
        timestamps start the estimate, and if the latest record of a ready peer carries a hold, it is joined when
        this node's first own record comes back. Not at once: these records were appended up to a heartbeat
        (``max_age_ms``) before they were read, so the estimate lags by that much and a line joined from it would
        too (a first tick early), and across a step back the older records outweigh the newer. An own record is
        read soon after its append and bounds the brokers' clock from above. The hold is joined only if the
        brokers' clock is then still the one that stamped it (within ``max_age_ms`` and a step): a step that ended
        meanwhile is not joined."""
        self._provisional = True
        for timestamp, read_at, _, _ in recent:
            self._samples.append(timestamp - read_at)
        if self._samples:
            self._offset = max(self._samples)
        self._pending = None
        for timestamp, read_at, ready, hold in recent:
            if not ready:
                continue
            self._pending = None
            if hold is not None and abs(hold[0] - timestamp) > self.step_ms:
                self._pending = (hold[0] - timestamp, hold[1], read_at, timestamp - read_at, max_age_ms)

    def observe(
        self, timestamp: int, now: int, peer_hold: tuple[int, int] | None = None, sent_at: int | None = None
    ) -> ClockStep | None:
        """A record with broker ``timestamp`` was read at local ``now``; ``peer_hold`` is its ``w`` when a ready
        peer wrote it, ``sent_at`` the local time this node sent it when it is its own. Returns a
        :class:`ClockStep` when a step begins, is joined or is adopted."""
        sample = timestamp - now
        if sent_at is not None:
            bound = timestamp - sent_at
            self._uppers.append(bound)
            if self._samples and max(self._samples) > bound + self.step_ms // 4:
                # A lower bound above an upper bound: the broker's clock went back since those samples (a leader
                # moved to a broker whose clock is behind). They would pin the estimate where it was.
                self._samples.clear()
        self._samples.append(sample)
        broker = max(self._samples)
        # A node that ended a hold of its own within the last hold period has judged this clock itself: peers'
        # records written before they read the same end (or adoption) still carry their hold, and the time between a
        # peer taking its line and the broker appending the record (a slow append) reads as a correction.
        recently_judged = self._judged_at is not None and now - self._judged_at < self.hold_ms
        if self._provisional and sent_at is not None:
            # This node's first own record: the line started from the records read at start-up is replaced (they
            # may be from before a step), by the hold they showed if the brokers' clock is still the one that
            # stamped it, else by the brokers' clock as this record shows it. A hold joined from a live peer stays.
            self._provisional = False
            pending, self._pending = self._pending, None
            if not self._step_joined:
                self._step_since = None
                if pending is not None and not recently_judged:
                    correction, held, at, then, max_age = pending
                    if then - self.step_ms <= broker <= then + max_age + self.step_ms:
                        return self._join(broker, correction, held + now - at, now)
                self._offset = broker
                return None
        joinable = self._step_since is None and not recently_judged
        if peer_hold is not None and joinable and sample >= broker - self.step_ms:
            line, held = peer_hold
            correction = line - timestamp
            if abs(correction) > self.step_ms:
                self._pending = None
                return self._join(broker, correction, held, now)
        reference = self._offset
        if reference is None or abs(broker - reference) <= self.step_ms:
            if self._step_since is not None:
                self._judged_at = now  # the step is over
            self._offset, self._step_since = broker, None
            return None
        upper = min(self._uppers, default=None)
        if broker < reference and (upper is None or upper >= reference - self.step_ms):
            # The lower bounds sagged but this node's own records were appended on time by its time line: it reads
            # late (a slow consumer, a stall), the broker's clock did not go back. Keep the time line.
            return None
        if broker > reference and self._step_since is None and (upper is None or broker <= upper + self.step_ms):
            # The time line was behind: built while this node read late (its own records were appended at least
            # this late by the broker's clock), or built before any of its own records came back, from records it
            # read late (it rebuilt its state from records a stall held back, say). Catching up is not a step. A node
            # with no record of its own read back runs no tick; if its peers hold a step, their next record makes it
            # join their hold (above) before it can.
            self._offset = broker
            return None
        if (
            self._step_since is not None
            and self._step_upper is not None
            and reference < broker <= self._step_upper + self.step_ms
        ):
            # The step is over, and the brokers' clock is back where this node's own records put it before the step:
            # the time line was behind (built while it read late). Catching up is not another step.
            self._offset, self._step_since, self._judged_at = broker, None, now
            return None
        if self._step_since is not None and self._step_joined and 0 < broker - reference <= 2 * self.step_ms:
            # A joined hold is the peer's time line, as late as the peer's reads were (up to a step) and the append
            # of the record it was taken from: when the brokers' clock comes back within that much ahead of it, the
            # step is over and the line catches up (without this, the residual was held as a step of its own,
            # peers joined it, and all adopted it a hold later: ticks a second late; soak seed 401566).
            self._offset, self._step_since, self._judged_at = broker, None, now
            return None
        if self._step_since is None:
            self._step_upper, self._step_joined = upper, False
        if self._step_since is None or abs(broker - self._step_to) > self.step_ms:
            self._step_since, self._step_to = now, broker  # a step, or a second one: its hold starts now
            self.steps += 1
            return ClockStep(by_ms=broker - reference, adopted=False)
        if now - self._step_since >= self.hold_ms:
            held = now - self._step_since
            self._offset, self._step_since, self._judged_at = broker, None, now
            return ClockStep(by_ms=broker - reference, adopted=True, held_ms=held)
        return None

    def _join(self, broker: int, correction: int, held: int, now: int) -> ClockStep:
        self._step_joined = True
        self._offset = broker + correction
        self._step_since, self._step_to = now - min(held, self.hold_ms), broker
        self._step_upper = None
        self.steps += 1
        return ClockStep(by_ms=-correction, adopted=False, held_ms=held, joined=True)

    def now(self, local: int) -> int | None:
        """The time line at local time ``local`` (None before the first record)."""
        return None if self._offset is None else local + self._offset

    def to_local(self, broker_ms: int) -> int | None:
        """The local time at which the time line reaches ``broker_ms``."""
        return None if self._offset is None else broker_ms - self._offset
