"""Celery schedules as pure timetables: checked against Celery's own arithmetic, pinned at DST changes.

Our timetables keep one behaviour whatever Celery is installed. Celery's own arithmetic changed between 5.3 and
5.7; where a test compares with it, it says which versions differ and how (docs/compatibility.md).
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import celery
import ephem  # type: ignore[import-untyped]
import pytest
from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule, solar
from celery.utils.time import LocalTimezone, remaining
from dateutil import tz as dateutil_tz  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_kafka_beat.celery_schedules import CelerySchedules, UnsupportedSchedule, tick_function

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
Y2000 = 946_684_800_000
Y2030 = 1_893_456_000_000

TickFunction = Callable[[int, int], int | None]

#: The installed Celery as (major, minor, patch): the oracle tests below expect what that version computes.
CELERY = tuple(int(n) for n in re.findall(r"\d+", celery.__version__)[:3])


def ms(when: datetime) -> int:
    return (when - EPOCH) // timedelta(milliseconds=1)


def at(iso: str) -> int:
    """``'2026-03-29T01:30'`` (UTC) in epoch ms."""
    return ms(datetime.fromisoformat(iso).replace(tzinfo=UTC))


def aware(t: int, tz: Any = UTC) -> datetime:
    return (EPOCH + timedelta(milliseconds=t)).astimezone(tz)


def app_in(timezone: Any) -> Celery:
    app = Celery(set_as_current=False)
    app.conf.timezone = timezone
    app.conf.enable_utc = True
    return app


def walk(tick: TickFunction, start: int, end: int) -> list[int]:
    """The ticks of a series started at ``start``, up to and including ``end``, one call per tick."""
    ticks: list[int] = []
    t = tick(start, start)
    while t is not None and t <= end:
        ticks.append(t)
        t = tick(t, t)
    return ticks


def random_instants(seed: int, n: int) -> Iterator[int]:
    rnd = random.Random(seed)
    for _ in range(n):
        t = rnd.randrange(Y2000, Y2030)
        yield t - t % MINUTE if rnd.random() < 0.3 else t  # whole minutes hit the slot boundaries


# --- intervals -------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    period=st.integers(1, 10 * DAY),
    prev=st.integers(-(2**45), 2**45),
    steps=st.integers(-50, 2000),
    offset=st.integers(0, 10 * DAY),
)
def test_interval_closed_form_equals_stepping_from_prev(period: int, prev: int, steps: int, offset: int) -> None:
    after = prev + steps * period + offset % period
    tick = tick_function("e", timedelta(milliseconds=period))
    expected = prev + period
    while expected <= after:
        expected += period
    assert tick(prev, after) == expected


@pytest.mark.parametrize(
    ("sched", "period"),
    [
        (timedelta(seconds=30), 30 * SECOND),
        (30, 30 * SECOND),
        (2.5, 2500),
        (schedule(timedelta(minutes=5)), 5 * MINUTE),
        (schedule(12), 12 * SECOND),
        (timedelta(microseconds=1), 1),  # never rounds to nothing
        (timedelta(microseconds=1500), 2),  # whole ms, half up
    ],
)
def test_interval_forms_and_their_period(sched: object, period: int) -> None:
    tick = tick_function("e", sched)
    assert tick(Y2000, Y2000) == Y2000 + period
    assert tick(Y2000, Y2000 - DAY) == Y2000 + period  # after before prev: still later than prev


def test_interval_skips_far_ahead_in_constant_time() -> None:
    tick = tick_function("e", timedelta(milliseconds=1))
    assert tick(0, 10**15) == 10**15 + 1


@pytest.mark.parametrize("sched", [0, -1, timedelta(0), timedelta(seconds=-5), schedule(timedelta(0))])
def test_interval_that_never_advances_is_refused_by_name(sched: object) -> None:
    with pytest.raises(UnsupportedSchedule, match=r"'every-nothing'.*positive"):
        tick_function("every-nothing", sched)


RELATIVE_PERIODS = [timedelta(seconds=30), timedelta(seconds=90), timedelta(hours=1), timedelta(minutes=90)]
RELATIVE_PERIODS += [timedelta(days=1), timedelta(hours=36), timedelta(days=2)]


def celery_relative_next(prev: int, period: timedelta, tz: ZoneInfo) -> int:
    """When Celery runs a ``relative=True`` schedule next after ``prev``: ``prev`` + ``celery.utils.time.remaining``."""
    start = aware(prev, tz)
    return ms(start.astimezone(UTC) + remaining(start, period, now=start, relative=True))


def celery_relative_next_before_5_7(prev: int, period: timedelta, tz: ZoneInfo) -> int:
    """What ``celery_relative_next`` is on Celery before 5.7, where it differs from ours across a DST change.

    Ours, like Celery 5.7 (celery/celery#10818), adds the period in real time and rounds down on the local clock.
    Before 5.7, Celery adds it on the wall clock (aware datetime arithmetic) and rounds that down: ``end``, a
    local wall-clock time. Since 5.5.2 (celery/celery#9669) it runs at ``end`` (its first occurrence, fold=0);
    before that, ``prev`` plus the wall-clock difference ``end - wall(prev)`` taken as real time.
    """
    wall = aware(prev, tz).replace(tzinfo=None)
    end = wall + period
    if period >= timedelta(days=1):
        end = end.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period >= timedelta(hours=1):
        end = end.replace(minute=0, second=0, microsecond=0)
    elif period >= timedelta(minutes=1):
        end = end.replace(second=0, microsecond=0)
    else:
        end = end.replace(microsecond=0)
    if CELERY >= (5, 5, 2):
        return ms(end.replace(tzinfo=tz))
    return prev + (end - wall) // timedelta(milliseconds=1)


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("period", RELATIVE_PERIODS, ids=str)
def test_relative_interval_matches_celery(timezone: str, period: timedelta) -> None:
    sched = schedule(period, relative=True, app=app_in(timezone))
    tick = tick_function("e", sched)
    tz = ZoneInfo(timezone)

    # Random starting points, and DST days: the spring and fall changes of 2026 in Europe and America.
    starts = [*random_instants(1, 60), at("2026-03-28T23:59:30"), at("2026-10-24T23:10"), at("2026-11-01T04:40")]
    for prev in starts:
        first = tick(prev, prev)
        assert first is not None
        for t, ours in ((prev, first), (first, tick(first, first))):
            assert ours is not None
            celery_next = celery_relative_next(t, period, tz)
            if CELERY < (5, 7):
                assert celery_next == celery_relative_next_before_5_7(t, period, tz)
                if celery_next != ours:  # only across a change of the UTC offset
                    assert aware(t, tz).utcoffset() != aware(max(ours, celery_next), tz).utcoffset()
                    continue
            assert ours == celery_next


@pytest.mark.parametrize(
    ("timezone", "period", "prev", "ours", "celery"),
    [
        # celery: where Celery runs it (before 5.5.2, from 5.5.2 to 5.6.x); None where it agrees with ours. All UTC.
        # A day from 00:59:30 on the spring-forward day: the next local midnight; before 5.5.2, 01:00.
        ("Europe/Berlin", timedelta(days=1), "2026-03-28T23:59:30", "2026-03-29T22:00", ("2026-03-29T23:00", None)),
        # A day from 00:40 on the fall-back day: the next local midnight; before 5.5.2, 23:00 the evening before.
        ("America/New_York", timedelta(days=1), "2026-11-01T04:40", "2026-11-02T05:00", ("2026-11-02T04:00", None)),
        # An hour from the first 02:00 of the repeated hour: the second 02:00; 5.5.2-5.6, 03:00 (two hours).
        ("Europe/Berlin", timedelta(hours=1), "2026-10-25T00:00", "2026-10-25T01:00", (None, "2026-10-25T02:00")),
        ("America/New_York", timedelta(hours=1), "2026-11-01T05:20", "2026-11-01T06:00", (None, "2026-11-01T07:00")),
        # 90 s from the first 02:59:10: the second 02:00, 50 s later; 5.5.2-5.6, 03:00 an hour later.
        ("Europe/Berlin", timedelta(seconds=90), "2026-10-25T00:59:10", "2026-10-25T01:00", (None, "2026-10-25T02:00")),
        # 90 min from 01:50 on the spring-forward day: 04:00 summer time; 5.5.2-5.6, 03:00, only 10 minutes later.
        ("Europe/Berlin", timedelta(minutes=90), "2026-03-29T00:50", "2026-03-29T02:00", (None, "2026-03-29T01:00")),
    ],
    ids=lambda v: str(v)[:19],
)
def test_relative_interval_across_dst_where_celery_before_5_7_differs(
    timezone: str, period: timedelta, prev: str, ours: str, celery: tuple[str | None, str | None]
) -> None:
    tick = tick_function("e", schedule(period, relative=True, app=app_in(timezone)))
    assert tick(at(prev), at(prev)) == at(ours)
    before_5_5_2, from_5_5_2_before_5_7 = celery
    expected = ours  # Celery 5.7 and later
    if CELERY < (5, 5, 2):
        expected = before_5_5_2 or ours
    elif CELERY < (5, 7):
        expected = from_5_5_2_before_5_7 or ours
    assert celery_relative_next(at(prev), period, ZoneInfo(timezone)) == at(expected)


@pytest.mark.parametrize(
    ("period", "first", "step"),
    [
        (timedelta(seconds=90), "2026-05-05T10:19:00", MINUTE),
        (timedelta(minutes=90), "2026-05-05T11:00:00", HOUR),
        (timedelta(hours=25), "2026-05-06T00:00:00", DAY),
        (timedelta(seconds=45, milliseconds=500), "2026-05-05T10:18:28", 45 * SECOND),
    ],
    ids=str,
)
def test_relative_interval_rounds_down_to_its_resolution_like_celery(period: timedelta, first: str, step: int) -> None:
    tick = tick_function("e", schedule(period, relative=True, app=app_in("UTC")))
    ticks = walk(tick, at("2026-05-05T10:17:42.500"), at(first) + 9 * step)
    assert ticks == [at(first) + k * step for k in range(10)]


def test_relative_days_land_on_local_midnight_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    tick = tick_function("e", schedule(timedelta(days=1), relative=True, app=app_in("Europe/Berlin")))
    ticks = walk(tick, at("2026-03-27T12:00"), at("2026-03-31T12:00"))
    assert [aware(t, berlin).isoformat() for t in ticks] == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        "2026-03-31T00:00:00+02:00",
    ]


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("period", RELATIVE_PERIODS, ids=str)
def test_relative_interval_jump_equals_walk(timezone: str, period: timedelta) -> None:
    tick = tick_function("e", schedule(period, relative=True, app=app_in(timezone)))
    for prev in (at("2026-03-07T21:13:10"), at("2026-10-24T20:59:59.999")):
        ticks = walk(tick, prev, prev + 20 * DAY)
        for after in (prev + 7 * HOUR, prev + 3 * DAY + 1, ticks[5], ticks[5] - 1):
            assert tick(prev, after) == next(t for t in ticks if t > after)


def test_relative_interval_under_a_second_is_refused() -> None:
    for period in (timedelta(milliseconds=500), timedelta(microseconds=999_900)):
        with pytest.raises(UnsupportedSchedule, match="'fast'"):
            tick_function("fast", schedule(period, relative=True, app=app_in("UTC")))


# --- crontab ---------------------------------------------------------------------------------------------------

CRONTABS: list[dict[str, Any]] = [
    {"minute": "*/15"},
    {"minute": 0, "hour": 4},
    {"minute": 30, "hour": "8-17/2", "day_of_week": "mon-fri"},
    {"minute": 0, "hour": 0, "day_of_week": "mon", "day_of_month": "1-7"},  # first Monday: Celery ANDs them
    {"minute": 5, "hour": 3, "month_of_year": "3,9"},
    {"minute": 0, "hour": 12, "day_of_month": "28-31"},  # last-day style
    {"minute": 0, "hour": 0, "day_of_month": [30, 31], "month_of_year": "*/2"},
    {"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2},
    {"minute": "0,59", "hour": "0,23", "day_of_month": "1,15", "month_of_year": "*/4", "day_of_week": "sat,sun"},
]


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Tokyo", "Asia/Kolkata"])
@pytest.mark.parametrize("spec", CRONTABS, ids=repr)
def test_crontab_matches_celery(timezone: str, spec: dict[str, Any]) -> None:
    sched = crontab(app=app_in(timezone), **spec)
    tick = tick_function("e", sched)
    for prev in random_instants(2, 150):
        # Celery's "now" is prev: before 5.7 its answer depended on the date of now (the next test), and this
        # machine's clock must not decide a test.
        sched.nowfun = lambda prev=prev: aware(prev, ZoneInfo(timezone))
        last_run_at, delta, _now = sched.remaining_delta(aware(prev, ZoneInfo(timezone)))
        assert tick(prev, prev) == ms((last_run_at + delta).astimezone(UTC)), aware(prev)


@pytest.mark.parametrize("now", ["2026-05-05T10:25", "2026-05-06T00:05"])
def test_crontab_before_celery_5_7_skipped_the_rest_of_an_earlier_days_hour(now: str) -> None:
    # Before 5.7, crontab.remaining_delta looked for a later slot in last_run_at's hour only when now was on the
    # same date (celery/celery#10494); on a later date it went on to the next matching hour. Ours has no now.
    last_run_at = at("2026-05-05T10:20")
    sched = crontab(minute="*/15", app=app_in("UTC"), nowfun=lambda: aware(at(now)))
    celery_last_run_at, delta, _now = sched.remaining_delta(aware(last_run_at))
    celery_next = ms((celery_last_run_at + delta).astimezone(UTC))
    same_day = now.startswith("2026-05-05")
    assert celery_next == at("2026-05-05T10:30" if same_day or CELERY >= (5, 7) else "2026-05-05T11:00")
    assert tick_function("e", sched)(last_run_at, last_run_at) == at("2026-05-05T10:30")


def test_crontab_day_of_week_and_day_of_month_must_both_match() -> None:
    tick = tick_function("e", crontab(minute=0, hour=9, day_of_week="fri", day_of_month=13, app=app_in("UTC")))
    ticks = walk(tick, at("2026-01-01T00:00"), at("2027-12-31T00:00"))
    assert ticks == [at("2026-02-13T09:00"), at("2026-03-13T09:00"), at("2026-11-13T09:00"), at("2027-08-13T09:00")]


def test_crontab_29_february_on_a_monday_is_found_decades_ahead() -> None:
    tick = tick_function("e", crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week=1))
    assert tick(at("2016-03-01T00:00"), at("2016-03-01T00:00")) == at("2044-02-29T00:00")


def test_crontab_that_never_matches_has_no_tick() -> None:
    sched = crontab(minute=0, hour=0, app=app_in("UTC"))
    sched.day_of_month, sched.month_of_year = {30}, {2}  # Celery refuses to build a 30 February; force one
    assert tick_function("e", sched)(Y2000, Y2000) is None


def test_crontab_past_year_9999_has_no_tick() -> None:
    tick = tick_function("e", crontab(minute=0, hour=0, day_of_month=1, month_of_year=1, app=app_in("UTC")))
    assert tick(at("9999-06-01T00:00"), at("9999-06-01T00:00")) is None


@settings(max_examples=200, deadline=None)
@given(
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    spec=st.sampled_from([*CRONTABS, {"minute": 0}, {"minute": [10, 50], "hour": "1-3"}]),
    prev=st.integers(at("2026-03-01T00:00"), at("2026-11-30T00:00")),
    ahead=st.integers(-DAY, 40 * DAY),
)
def test_crontab_jump_equals_walk(timezone: str, spec: dict[str, Any], prev: int, ahead: int) -> None:
    tick = tick_function("e", crontab(app=app_in(timezone), **spec))
    after = prev + ahead
    result = tick(prev, after)
    assert result is not None
    assert result > max(prev, after)
    t = tick(prev, prev) or 0
    while t <= after:
        t = tick(t, t) or 0
    assert result == t


# --- crontab across DST changes --------------------------------------------------------------------------------


def grid(start: str, end: str, step: int, skip: tuple[str, ...] = ()) -> list[int]:
    """Every ``step`` from ``start`` to ``end`` (UTC, inclusive), except the instants in ``skip``."""
    skipped = {at(s) for s in skip}
    return [t for t in range(at(start), at(end) + 1, step) if t not in skipped]


# The 2026 changes: Berlin 03-29 01:00Z (02:00 -> 03:00) and 10-25 01:00Z (03:00 -> 02:00); New York 03-08 07:00Z
# (02:00 -> 03:00) and 11-01 06:00Z (02:00 -> 01:00). Windows: 24 h either side of the change.
DST_CASES: list[tuple[str, dict[str, Any], str, list[int]]] = [
    # A daily 02:30 that does not exist runs at 02:30 with the winter offset, i.e. 03:30 summer time.
    (
        "Europe/Berlin",
        {"minute": 30, "hour": 2},
        "2026-03-29T01:00",
        [at("2026-03-28T01:30"), at("2026-03-29T01:30"), at("2026-03-30T00:30")],
    ),
    # A daily 02:30 in the repeated hour runs once, at the first 02:30 (summer time).
    ("Europe/Berlin", {"minute": 30, "hour": 2}, "2026-10-25T01:00", [at("2026-10-25T00:30")]),
    (
        "America/New_York",
        {"minute": 30, "hour": 2},
        "2026-03-08T07:00",
        [at("2026-03-07T07:30"), at("2026-03-08T07:30"), at("2026-03-09T06:30")],
    ),
    # In New York the repeated hour is 01:00-01:59 (02:30 exists once, in winter time); 01:30 runs once.
    (
        "America/New_York",
        {"minute": 30, "hour": 2},
        "2026-11-01T06:00",
        [at("2026-10-31T06:30"), at("2026-11-01T07:30")],
    ),
    ("America/New_York", {"minute": 30, "hour": 1}, "2026-11-01T06:00", [at("2026-11-01T05:30")]),
    # Hourly: 02:00 and 03:00 are the same instant in spring (once); in autumn the repeated hour's slot runs once.
    ("Europe/Berlin", {"minute": 0}, "2026-03-29T01:00", grid("2026-03-28T02:00", "2026-03-30T01:00", HOUR)),
    (
        "Europe/Berlin",
        {"minute": 0},
        "2026-10-25T01:00",
        grid("2026-10-24T02:00", "2026-10-26T01:00", HOUR, skip=("2026-10-25T01:00",)),
    ),
    ("America/New_York", {"minute": 0}, "2026-03-08T07:00", grid("2026-03-07T08:00", "2026-03-09T07:00", HOUR)),
    (
        "America/New_York",
        {"minute": 0},
        "2026-11-01T06:00",
        grid("2026-10-31T07:00", "2026-11-02T06:00", HOUR, skip=("2026-11-01T06:00",)),
    ),
    ("Europe/Berlin", {"minute": "*/30"}, "2026-03-29T01:00", grid("2026-03-28T01:30", "2026-03-30T01:00", HOUR // 2)),
    (
        "Europe/Berlin",
        {"minute": "*/30"},
        "2026-10-25T01:00",
        grid("2026-10-24T01:30", "2026-10-26T01:00", HOUR // 2, skip=("2026-10-25T01:00", "2026-10-25T01:30")),
    ),
    (
        "America/New_York",
        {"minute": "*/30"},
        "2026-11-01T06:00",
        grid("2026-10-31T06:30", "2026-11-02T06:00", HOUR // 2, skip=("2026-11-01T06:00", "2026-11-01T06:30")),
    ),
]


@pytest.mark.parametrize(("timezone", "spec", "change", "expected"), DST_CASES, ids=lambda v: str(v)[:30])
def test_crontab_ticks_around_dst_changes(
    timezone: str, spec: dict[str, Any], change: str, expected: list[int]
) -> None:
    tick = tick_function("e", crontab(app=app_in(timezone), **spec))
    ticks = walk(tick, at(change) - DAY, at(change) + DAY)
    assert ticks == expected
    walls = [aware(t, ZoneInfo(timezone)).replace(tzinfo=None) for t in ticks]
    assert len(set(walls)) == len(walls)  # no wall-clock slot twice
    assert ticks == sorted(set(ticks))  # no UTC instant twice


@pytest.mark.parametrize(
    ("timezone", "day", "count"),
    [
        ("Europe/Berlin", "2026-03-29", 23),
        ("Europe/Berlin", "2026-10-25", 24),
        ("America/New_York", "2026-03-08", 23),
        ("America/New_York", "2026-11-01", 24),
        ("Europe/Berlin", "2026-07-01", 24),
    ],
)
def test_hourly_crontab_ticks_per_local_day(timezone: str, day: str, count: int) -> None:
    tz = ZoneInfo(timezone)
    midnight = ms(datetime.fromisoformat(day).replace(tzinfo=tz))
    next_midnight = ms((datetime.fromisoformat(day) + timedelta(days=1)).replace(tzinfo=tz))
    tick = tick_function("e", crontab(minute=0, app=app_in(timezone)))
    assert len(walk(tick, midnight - 1, next_midnight - 1)) == count


def test_crontab_started_in_the_second_occurrence_of_a_repeated_hour_skips_its_slots() -> None:
    # 01:10Z is 02:10 CET, the second 02:10 of the night. Celery would find the entry due over and over until
    # 02:45; here the first 02:15/02:30/02:45 have had their turn and the next tick is 03:00 CET.
    tick = tick_function("e", crontab(minute="*/15", app=app_in("Europe/Berlin")))
    assert tick(at("2026-10-25T01:10"), at("2026-10-25T01:10")) == at("2026-10-25T02:00")


@pytest.mark.parametrize("change", ["2026-03-29T01:00", "2026-10-25T01:00"])
@pytest.mark.parametrize("spec", [{"minute": 0}, {"minute": "*/30"}, {"minute": 30, "hour": 2}], ids=repr)
def test_crontab_in_a_non_zoneinfo_timezone_agrees_with_zoneinfo(change: str, spec: dict[str, Any]) -> None:
    dateutil_berlin = dateutil_tz.gettz("Europe/Berlin")
    assert dateutil_berlin is not None
    expected = walk(
        tick_function("e", crontab(app=app_in("Europe/Berlin"), **spec)), at(change) - DAY, at(change) + DAY
    )
    tick = tick_function("e", crontab(app=app_in(dateutil_berlin), **spec))
    assert walk(tick, at(change) - DAY, at(change) + DAY) == expected


def test_crontab_without_a_timezone_runs_in_utc() -> None:
    sched = crontab(minute=0, hour=4, app=app_in("Asia/Tokyo"))
    sched.tz = None
    assert tick_function("e", sched)(at("2026-05-05T10:00"), at("2026-05-05T10:00")) == at("2026-05-06T04:00")


@pytest.fixture
def machine_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Sets this process's local time zone (TZ) for the test; the one before it comes back afterwards."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("timezone", "change"),
    [
        ("America/New_York", "2026-03-08T07:00"),
        ("America/New_York", "2026-11-01T06:00"),
        ("Europe/Berlin", "2026-03-29T01:00"),
        ("Europe/Berlin", "2026-10-25T01:00"),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda app: crontab(minute=0, app=app),
        lambda app: crontab(minute="*/30", app=app),
        lambda app: crontab(minute=30, hour="1,2", app=app),
        lambda app: schedule(timedelta(hours=1), relative=True, app=app),
        lambda app: schedule(timedelta(days=1), relative=True, app=app),
    ],
    ids=["hourly", "half-hourly", "01:30+02:30", "relative-hour", "relative-day"],
)
def test_celerys_local_timezone_is_the_machines_local_time(
    machine_timezone: Callable[[str], None], timezone: str, change: str, make: Callable[[Celery], Any]
) -> None:
    # Celery's LocalTimezone (enable_utc=False without a timezone: the default before 5.6) converts wrongly near
    # DST changes, and before 5.7 a day ahead west of UTC; the ticks are the zone's own on every version.
    machine_timezone(timezone)
    local = make(app_in("UTC"))
    local.tz = LocalTimezone()
    expected = walk(tick_function("e", make(app_in(timezone))), at(change) - DAY, at(change) + 2 * DAY)
    assert walk(tick_function("e", local), at(change) - DAY, at(change) + 2 * DAY) == expected


# --- solar -----------------------------------------------------------------------------------------------------

BERLIN = (52.52, 13.405)

#: Each event as we compute it on every Celery version: (horizon, ephem method, use_center). Celery 5.6.3 and
#: later define the same; before 5.6.3, Celery's dusk_astronomical horizon was "18" (celery/celery#10121).
SOLAR_EVENTS = {
    "dawn_astronomical": ("-18", "next_rising", True),
    "dawn_nautical": ("-12", "next_rising", True),
    "dawn_civil": ("-6", "next_rising", True),
    "sunrise": ("-0:34", "next_rising", False),
    "solar_noon": ("0", "next_transit", False),
    "sunset": ("-0:34", "next_setting", False),
    "dusk_civil": ("-6", "next_setting", True),
    "dusk_nautical": ("-12", "next_setting", True),
    "dusk_astronomical": ("-18", "next_setting", True),
}


def ephem_event(event: str, prev: int, horizon: str | None = None) -> int | None:
    """The event's next occurrence after ``prev`` as ephem finds it from Berlin, by the event's definition in
    ``SOLAR_EVENTS`` (or at ``horizon``); ``None`` when it does not happen that day (polar day or night)."""
    default_horizon, method, use_center = SOLAR_EVENTS[event]
    observer = ephem.Observer()
    observer.lat, observer.lon, observer.elevation = str(BERLIN[0]), str(BERLIN[1]), 0
    observer.pressure, observer.horizon = 0, horizon or default_horizon
    start = ephem.Date(aware(prev).replace(tzinfo=None))
    observer.date = start
    kwargs = {"use_center": True} if use_center else {}
    try:
        found = getattr(observer, method)(ephem.Sun(), start=start, **kwargs)
    except ephem.CircumpolarError:
        return None
    return ms(found.datetime().replace(tzinfo=UTC))


@pytest.mark.parametrize("event", SOLAR_EVENTS)
def test_solar_events_are_ours_whatever_the_celery_version(event: str) -> None:
    tick = tick_function("e", solar(event, *BERLIN, app=app_in("UTC")))
    for prev in random_instants(4, 20):
        expected = ephem_event(event, prev)
        if expected is not None:  # a day without the event: test_solar_polar_day_and_night
            assert abs((tick(prev, prev) or 0) - expected) < MINUTE


def test_dusk_astronomical_is_when_the_sun_sets_18_degrees_below_the_horizon() -> None:
    # After sunset, not hours before it, even where Celery's own table said +18 (before 5.6.3).
    tick = tick_function("e", solar("dusk_astronomical", *BERLIN, app=app_in("UTC")))
    sunset = tick_function("e", solar("sunset", *BERLIN, app=app_in("UTC")))
    noon = at("2026-03-01T12:00")
    assert 90 * MINUTE < (tick(noon, noon) or 0) - (sunset(noon, noon) or 0) < 3 * HOUR


@pytest.mark.parametrize("event", ["sunrise", "sunset", "solar_noon", "dawn_civil", "dusk_astronomical"])
def test_solar_matches_celery(event: str) -> None:
    """Celery's solar arithmetic is ours, except that:

    * before 5.6.3, Celery's dusk_astronomical is the sun setting through +18 degrees (celery/celery#10121);
    * before 5.7, on a day without the event (Berlin has no astronomical night around midsummer, and the sun never
      reaches +18 degrees in winter), Celery's fallback adds a ``timedelta`` to an ``ephem.Date``: ``TypeError``.
    """
    app = app_in("UTC")
    tick = tick_function("e", solar(event, *BERLIN, app=app))
    celery_horizon = "18" if event == "dusk_astronomical" and CELERY < (5, 6, 3) else None
    for prev in random_instants(3, 20):
        celery_sched = solar(event, *BERLIN, app=app, nowfun=lambda prev=prev: aware(prev))
        celery_event = ephem_event(event, prev, celery_horizon)
        if celery_event is None and CELERY < (5, 7):
            with pytest.raises(TypeError, match=r"'ephem\.Date' and 'datetime\.timedelta'"):
                celery_sched.remaining_estimate(aware(prev))
            continue
        expected = ms(aware(prev) + celery_sched.remaining_estimate(aware(prev)))
        if celery_horizon is None:
            assert abs((tick(prev, prev) or 0) - expected) < MINUTE
        else:
            assert celery_event is not None
            assert abs(celery_event - expected) < MINUTE
            assert abs((tick(prev, prev) or 0) - expected) > HOUR  # ours: -18 degrees, after sunset


def test_solar_sunrise_matches_ephem_and_advances_a_day_at_a_time() -> None:
    tick = tick_function("e", solar("sunrise", *BERLIN, app=app_in("UTC")))
    ticks = walk(tick, at("2026-06-01T12:00"), at("2026-06-11T12:00"))
    assert len(ticks) == 10
    assert all(20 * HOUR < b - a < 28 * HOUR for a, b in pairwise(ticks))
    observer = ephem.Observer()
    observer.lat, observer.lon, observer.pressure, observer.horizon = str(BERLIN[0]), str(BERLIN[1]), 0, "-0:34"
    direct = observer.next_rising(ephem.Sun(), start=ephem.Date("2026/6/1 12:00"))
    assert abs(ticks[0] - ms(direct.datetime().replace(tzinfo=UTC))) < MINUTE


def test_solar_tick_is_later_than_prev_and_after() -> None:
    tick = tick_function("e", solar("sunset", *BERLIN, app=app_in("UTC")))
    sunset = tick(at("2026-06-01T00:00"), at("2026-06-01T00:00"))
    assert sunset is not None
    assert tick(sunset, sunset) == tick(sunset - DAY, sunset)
    assert (tick(sunset, sunset) or 0) - sunset > 20 * HOUR
    assert tick(sunset, sunset - DAY) == tick(sunset, sunset)


@pytest.mark.parametrize("event", ["sunrise", "sunset", "dawn_astronomical", "solar_noon"])
@pytest.mark.parametrize("start", ["2026-06-21T00:00", "2026-12-21T00:00"])
@pytest.mark.parametrize("lat", [78.2, -89.5])
def test_solar_polar_day_and_night(event: str, start: str, lat: float) -> None:
    tick = tick_function("e", solar(event, lat, 15.6, app=app_in("UTC")))
    result = tick(at(start), at(start))
    assert result is None or at(start) < result < at(start) + 400 * DAY


def test_solar_event_we_do_not_know_is_refused() -> None:
    sched = solar("sunrise", *BERLIN, app=app_in("UTC"))
    sched.event = "moonrise"  # Celery refuses unknown events; a later Celery could add one
    with pytest.raises(UnsupportedSchedule, match=r"'moon': solar event 'moonrise' is not supported"):
        tick_function("moon", sched)


def test_solar_without_ephem_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sched = solar("sunrise", *BERLIN, app=app_in("UTC"))
    monkeypatch.setitem(sys.modules, "ephem", None)
    with pytest.raises(
        UnsupportedSchedule, match=r"'sun': solar schedules need the 'ephem' package: pip install ephem"
    ):
        tick_function("sun", sched)


def test_solar_leaves_the_schedule_object_alone() -> None:
    sched = solar("sunrise", *BERLIN, app=app_in("UTC"))
    before = float(sched.cal.date)
    tick_function("e", sched)(Y2000, Y2000)
    assert float(sched.cal.date) == before


# --- unsupported schedules, the Schedule protocol, purity ------------------------------------------------------


class Custom:
    pass


class MyCrontab(crontab):  # type: ignore[misc]
    pass


@pytest.mark.parametrize(
    ("sched", "type_name"),
    [
        (Custom(), f"{__name__}.Custom"),
        (BaseSchedule(), "celery.schedules.BaseSchedule"),
        (MyCrontab(minute=0), f"{__name__}.MyCrontab"),
        ("*/5 * * * *", "builtins.str"),
        (None, "builtins.NoneType"),
        (True, "builtins.bool"),
    ],
)
def test_unsupported_schedule_names_entry_and_type(sched: object, type_name: str) -> None:
    with pytest.raises(UnsupportedSchedule) as raised:
        tick_function("nightly-report", sched)
    message = str(raised.value)
    assert "'nightly-report'" in message
    assert f"'{type_name}'" in message
    assert "crontab" in message
    assert "solar" in message
    assert raised.value.entry == "nightly-report"
    assert isinstance(raised.value, TypeError)


def test_celery_schedules_converts_every_entry_up_front() -> None:
    with pytest.raises(UnsupportedSchedule, match="'bad'"):
        CelerySchedules({"good": 10, "bad": Custom()})


def test_celery_schedules_implements_the_protocol() -> None:
    schedules = CelerySchedules({"every-10s": 10, "cron": crontab(minute="*/5", app=app_in("UTC"))})
    assert schedules.next_tick("every-10s", Y2000, Y2000 + 25 * SECOND) == Y2000 + 30 * SECOND
    assert schedules.next_tick("cron", Y2000, Y2000) == Y2000 + 5 * MINUTE
    assert schedules.next_tick("unknown", Y2000, Y2000) is None


def no_clock() -> datetime:
    raise AssertionError("a timetable read the clock")


@pytest.mark.parametrize(
    "sched",
    [
        schedule(timedelta(minutes=7), nowfun=no_clock, app=app_in("UTC")),
        schedule(timedelta(hours=2), relative=True, nowfun=no_clock, app=app_in("Europe/Berlin")),
        schedule(timedelta(days=1), relative=True, nowfun=no_clock, app=app_in("America/New_York")),
        crontab(minute=0, hour="*/6", nowfun=no_clock, app=app_in("Europe/Berlin")),
        solar("sunset", *BERLIN, nowfun=no_clock, app=app_in("UTC")),
    ],
    ids=repr,
)
def test_timetables_are_pure_and_need_no_clock(sched: object) -> None:
    tick = tick_function("e", sched)
    y1990 = at("1990-07-01T12:34:56.789")
    first = tick(y1990, y1990)
    assert first is not None
    assert y1990 < first < y1990 + 2 * DAY
    assert tick(y1990, y1990) == first
    assert tick_function("e", sched)(y1990, y1990) == first
