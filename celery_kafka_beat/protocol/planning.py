"""Which ticks of an entry to decide now: timetables, catch-up policies and delivery modes. Pure."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Protocol

__all__ = ["CatchUp", "DeliveryMode", "Schedule", "latest_tick", "plan_ticks"]


class DeliveryMode(StrEnum):
    """What happens to a tick whose owner decided it but died before publishing it."""

    AT_MOST_ONCE = "at-most-once"
    """The tick is lost. No tick is ever published twice."""
    AT_LEAST_ONCE = "at-least-once"
    """The next owner publishes it again with the same task id (a possible, identifiable duplicate)."""


class CatchUp(StrEnum):
    """What to do with ticks that fell due while no node could dispatch (older than the grace period)."""

    SKIP = "skip"
    """Drop them; continue with the next tick that is not overdue."""
    ONCE = "once"
    """Run the latest overdue tick once and drop the others (what stock Celery beat does after downtime)."""
    ALL = "all"
    """Run every overdue tick that is within ``catchup_window_ms``, oldest first."""


class Schedule(Protocol):
    """The entries' timetables, in UTC milliseconds. Must be a pure function of its arguments."""

    def next_tick(self, entry: str, prev: int, after: int) -> int | None:
        """The first tick of ``entry`` strictly later than ``after``, for a series whose previous tick (or
        starting point, for an entry that never ran) is ``prev``; ``None`` if the entry has no further tick."""
        ...  # pragma: no cover


class PlanSettings(Protocol):
    @property
    def decision_lead_ms(self) -> int: ...  # pragma: no cover

    @property
    def catchup_grace_ms(self) -> int: ...  # pragma: no cover

    @property
    def catchup_window_ms(self) -> int: ...  # pragma: no cover

    @property
    def catchup(self) -> CatchUp: ...  # pragma: no cover

    @property
    def max_batch(self) -> int: ...  # pragma: no cover


#: How many ticks past the first one ``latest_tick`` looks at before it widens its search (doubling): finding the
#: latest of a million overdue ticks takes a few dozen timetable calls, not a million.
_WALK: Final = 4


def latest_tick(schedule: Schedule, entry: str, prev: int, first: int, until: int) -> int:
    """The latest tick of ``entry``'s series (previous tick ``prev``) at or before ``until``, given ``first``, the
    series' first tick after ``prev`` (which is at or before ``until``)."""
    latest = first
    width = 1
    while True:
        # The first tick after ``until - width``: if it is still at or before ``until``, walk forward from it.
        probe = schedule.next_tick(entry, prev, max(latest, until - width))
        if probe is None or probe > until:
            if until - width <= latest:
                return latest
            width *= 2
            continue
        latest = probe
        for _ in range(_WALK):
            nxt = schedule.next_tick(entry, prev, latest)
            if nxt is None or nxt > until:
                return latest
            latest = nxt
        width = 1  # ticks are dense here: look just before ``until`` again


def plan_ticks(
    schedule: Schedule, entry: str, prev: int, broker_now: int, settings: PlanSettings
) -> tuple[list[int], int | None]:
    """Ticks of ``entry`` to decide now, and the broker time at which to plan again (None: never).

    A tick within ``catchup_grace_ms`` of now is merely late (a handover) and always decided; older ones are
    overdue and handled by the catch-up policy.
    """
    lead, grace = settings.decision_lead_ms, settings.catchup_grace_ms
    first = schedule.next_tick(entry, prev, prev)
    if first is None:
        return [], None
    if first > broker_now + lead:
        return [], first - lead
    if first >= broker_now - grace:
        return [first], None
    cutoff = broker_now - grace
    if settings.catchup is CatchUp.SKIP:
        nxt = schedule.next_tick(entry, prev, cutoff - 1)
        if nxt is None:
            return [], None
        return ([nxt], None) if nxt <= broker_now + lead else ([], nxt - lead)
    if settings.catchup is CatchUp.ONCE:
        return [latest_tick(schedule, entry, prev, first, broker_now)], None
    # CatchUp.ALL: every overdue tick within the window, oldest first, a bounded number per step.
    floor = broker_now - settings.catchup_window_ms
    tick: int | None = first if first >= floor else schedule.next_tick(entry, prev, floor - 1)
    ticks: list[int] = []
    while tick is not None and tick <= broker_now + lead and len(ticks) < settings.max_batch:
        ticks.append(tick)
        tick = schedule.next_tick(entry, prev, tick)
    if ticks or tick is None:
        return ticks, None
    return [], tick - lead
