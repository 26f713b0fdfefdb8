"""Which ticks to decide: the catch-up policies, and finding the latest overdue tick fast."""

from __future__ import annotations

from celery_kafka_beat.protocol import CatchUp, NodeSettings, plan_ticks
from celery_kafka_beat.protocol.planning import latest_tick
from celery_kafka_beat.protocol.schedules import IntervalSchedule

DAY = 86_400_000


class Counting(IntervalSchedule):
    def __init__(self, periods: dict[str, int]) -> None:
        super().__init__(periods)
        self.calls = 0

    def next_tick(self, entry: str, prev: int, after: int) -> int | None:
        self.calls += 1
        return super().next_tick(entry, prev, after)


def test_once_runs_the_latest_overdue_tick_however_long_the_outage() -> None:
    """Reproduced: catch-up 'once' walked tick by tick and stopped after 200,000 steps, so a 1 s entry down for 3
    days ran a 16 h old tick, and then the latest."""
    schedule = Counting({"e": 1000})
    settings = NodeSettings(node="n", catchup=CatchUp.ONCE)
    prev = 1_700_000_000_000
    now = prev + 3 * DAY + 123
    ticks, again = plan_ticks(schedule, "e", prev, now, settings)
    assert ticks == [prev + 3 * DAY]
    assert again is None
    assert schedule.calls < 100


def test_latest_tick_is_exact_at_the_boundaries() -> None:
    schedule = IntervalSchedule({"e": 7})
    for until in range(7, 200):
        assert latest_tick(schedule, "e", 0, 7, until) == until - until % 7
