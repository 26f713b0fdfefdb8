"""Simple timetables for the protocol's tests, simulator and demo (Celery's schedules are adapted elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping


class IntervalSchedule:
    """Fixed periods in ms, anchored at the series' previous tick: ticks are ``prev + k * period``."""

    def __init__(self, periods: Mapping[str, int]) -> None:
        for name, period in periods.items():
            if period <= 0:
                raise ValueError(f"period of {name!r} must be positive, got {period}")
        self.periods = dict(periods)

    def next_tick(self, entry: str, prev: int, after: int) -> int | None:
        period = self.periods.get(entry)
        if period is None:
            return None
        k = max(1, (after - prev) // period + 1)
        return prev + k * period
