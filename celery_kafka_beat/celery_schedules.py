"""Celery schedule objects as pure timetables: ``(prev, after) -> next tick``, all in UTC epoch milliseconds.

:class:`CelerySchedules` implements the protocol's :class:`~celery_kafka_beat.protocol.node.Schedule` for a beat
schedule's entries. Every timetable is a pure, deterministic function of its arguments and of the schedule
object's configuration (read once, when the entry is converted): it never reads a clock. The next tick is always
strictly later than both ``prev`` (the series' previous tick, or its starting point) and ``after``.

Supported schedules
-------------------

**Intervals** (``celery.schedules.schedule``, a :class:`~datetime.timedelta` or a number of seconds). The period
is rounded to whole milliseconds (at least 1 ms); a zero or negative period is rejected.

* Ticks are ``prev + k * period`` for ``k >= 1``: the series keeps the phase of its starting point. (Celery's
  beat adds the period to the time it actually sent the task, so its series drifts by its own latency.)
* ``relative=True`` reproduces Celery 5.7's rounding (``celery.utils.time.remaining``) on every Celery version
  (the arithmetic is ours; earlier Celery differs across DST changes, see below): a due time is rounded *down*
  to the resolution of the period, taken from its size: whole days (a period of 1 day or more) round to local
  midnight, whole hours to the start of the local hour, whole minutes to the start of the minute, anything
  shorter to the whole second. "Local" is the schedule's timezone (``sched.tz``, i.e. the app's ``timezone``),
  because Celery rounds beat's ``last_run_at``, which it keeps in that timezone. The first tick is
  ``floor(prev + period)``; from there the ticks are ``floor(period / resolution)`` resolution units apart. So
  the effective period can be *shorter* than ``run_every``: 90 s runs every minute, 90 minutes every hour,
  36 hours every day, exactly as under Celery. Day periods step in calendar days and land on local midnight
  whatever the DST changes in between. A relative period under 1 s is rejected (Celery's rounding never
  advances it). The arithmetic assumes the UTC offset changes by whole resolutions, as all DST changes do but
  one: in Australia/Lord_Howe (30-minute DST) ticks of an hourly relative series near a change may be half an
  hour off Celery's. Before 5.7 (celery/celery#10818), Celery added the period on the wall clock rather than in
  real time, so across a DST change it differs from these ticks: before 5.5.2 (celery/celery#9669), day periods
  land an hour off local midnight; from 5.5.2 to 5.6.x, periods under a day can skip the repeated hour or come
  early after a spring-forward. ``docs/compatibility.md`` has the cases.

**crontab** (``celery.schedules.crontab``), evaluated in the crontab's timezone (``sched.tz``, from the app's
``timezone``/``enable_utc``; UTC if it has none; Celery's ``LocalTimezone`` is taken as the machine's local time,
converted by the C library, not by ``LocalTimezone``'s own arithmetic, which is wrong near DST changes). A
wall-clock slot matches when its minute, hour, day of month, month *and* day of week are all in the crontab's
sets; like Celery (and unlike Vixie cron) a restricted day of week is ANDed with a restricted day of month.
Seconds are always 0. The next tick is found by walking the matching wall-clock slots strictly later than the
local time of ``max(prev, after)`` (whole months and days that cannot match are skipped), converting each to UTC
as its *first* occurrence (``fold=0``), and taking the first one later than both ``prev`` and ``after``. Around
DST changes this means:

* Fall back: a slot in the repeated hour runs once, at its first occurrence, never twice. A series whose
  starting point lies in the second occurrence skips the repeated slots (they already had their turn).
* Spring forward: a slot in the skipped hour (e.g. 02:30 on a day that jumps from 02:00 to 03:00) runs once, at
  the instant given by the offset before the change, i.e. 03:30 local summer time. Where that instant is also a
  real slot (02:00 and 03:00 of an hourly crontab are both 03:00 summer time), it runs once: no two ticks ever
  share a UTC instant. An hourly crontab therefore has 23 ticks on the short day and 24 on the long day.
* No tick within 50 years (a 29 February that must also be a given weekday can take 40 years): ``None``.

Celery's own crontab arithmetic gives the same ticks, with one exception: when its ``last_run_at`` lies in the
second occurrence of a repeated hour (a beat started then, or a new entry) and the next slot is in the same
hour, Celery computes that slot's *first* occurrence, which is already past, so it finds the entry due at every
wake-up until the wall clock leaves the hour's last slot. Here those slots simply do not run again. (Before 5.7,
Celery's answer also depended on the date of its ``now``: with ``now`` on a later date than ``last_run_at``, it
skipped the rest of ``last_run_at``'s hour, celery/celery#10494. These timetables have no ``now``.)

**solar** (``celery.schedules.solar``, needs the ``ephem`` package): the first event strictly after
``max(prev, after)``, computed with ephem as Celery 5.6.3 and later do (the schedule's observer; the event's
horizon, rising/setting/transit method and ``use_center`` from this module's own copy of Celery's table), on a
fresh observer per call. The table is ours so that the timing does not depend on the installed Celery: before
5.6.3, Celery's ``dusk_astronomical`` had a horizon of +18 degrees (the sun setting through 18 degrees *above*
the horizon, hours before sunset; celery/celery#10121); here it is -18 degrees, astronomical dusk, on every
version. When the event does not happen on a day (polar day or night), the search moves on one day (to the next
anti-transit) at a time, for at most 400 days; ``None`` if it never happens. (Celery 5.7 instead returns the
instant at which its 366-day search stopped, and would run the task then; before 5.7, its fallback for such a
day raises ``TypeError``.)

Anything else, including subclasses of these three classes (they may change the timing), is rejected with
:class:`UnsupportedSchedule` when the schedule is converted, i.e. at start-up.
"""

from __future__ import annotations

import calendar
import importlib
import time as _time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule, solar
from celery.utils.time import LocalTimezone

__all__ = ["CelerySchedules", "TickFunction", "UnsupportedSchedule", "tick_function"]

TickFunction = Callable[[int, int], int | None]
"""``(prev, after) -> tick``: the first tick later than both ``prev`` and ``after``, or ``None``."""

_SECOND_MS: Final = 1000
_MINUTE_MS: Final = 60 * _SECOND_MS
_HOUR_MS: Final = 60 * _MINUTE_MS
_DAY_MS: Final = 24 * _HOUR_MS
_MS: Final = timedelta(milliseconds=1)
_MINUTE: Final = timedelta(minutes=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE: Final = datetime(1970, 1, 1)

#: How far a crontab is searched before it is declared never to run again. A 29 February that must also be a
#: given weekday recurs every 28 years, but up to 40 across a century year that is not a leap year (2100).
_CRON_HORIZON_YEARS: Final = 50

#: How many days a solar event is searched for. Polar day and night last at most about six months (at the poles),
#: so an event that happens at all at a latitude happens within a year; a little more absorbs edge effects.
_SOLAR_SEARCH_DAYS: Final = 400

#: ephem's dates are days since 1899-12-31 12:00 UTC; this is the Unix epoch on that scale.
_EPHEM_UNIX_EPOCH: Final = 25567.5

#: When ephem returns an event at (or, after rounding to the ms, not later than) the search start, the search
#: resumes this long after it. Events of one kind are hours apart, so no event is skipped.
_SOLAR_RESUME_DAYS: Final = 1 / 1440

_SUPPORTED: Final = "use a timedelta/number of seconds, celery.schedules.crontab or celery.schedules.solar"
_EPHEM_MISSING: Final = "solar schedules need the 'ephem' package: pip install ephem"


class UnsupportedSchedule(TypeError):
    """An entry's schedule cannot be turned into a timetable; the message names the entry and says why."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"entry {entry!r}: {reason}")
        self.entry = entry


def tick_function(name: str, sched: object) -> TickFunction:
    """The timetable of entry ``name``, whose schedule is ``sched``; see the module docstring for the rules.

    Raises :class:`UnsupportedSchedule` for a schedule that is not supported or that never advances.
    """
    if isinstance(sched, int | float) and not isinstance(sched, bool):  # a bool is no number of seconds
        try:
            return _interval(name, timedelta(seconds=sched), relative=False, tz=None)
        except (OverflowError, ValueError) as exc:
            raise UnsupportedSchedule(name, f"interval of {sched!r} seconds is not representable") from exc
    if isinstance(sched, timedelta):
        return _interval(name, sched, relative=False, tz=None)
    # Exact types: a subclass may override the timing (e.g. is_due), which these timetables would silently ignore.
    kind: Any = type(sched)
    celery_sched: Any = sched
    if kind is schedule:
        run_every = celery_sched.run_every
        if not isinstance(run_every, timedelta):
            raise UnsupportedSchedule(name, f"interval {run_every!r} is not a timedelta")
        relative = bool(celery_sched.relative)
        return _interval(name, run_every, relative=relative, tz=_zone_of(name, celery_sched) if relative else None)
    if kind is crontab:
        return _Cron(
            minutes=tuple(sorted(celery_sched.minute)),
            hours=tuple(sorted(celery_sched.hour)),
            days_of_month=tuple(sorted(celery_sched.day_of_month)),
            months=tuple(sorted(celery_sched.month_of_year)),
            weekdays=frozenset(celery_sched.day_of_week),
            zone=_zone_of(name, celery_sched),
        )
    if kind is solar:
        return _solar(name, celery_sched)
    raise UnsupportedSchedule(
        name, f"schedule type '{kind.__module__}.{kind.__qualname__}' is not supported by KafkaScheduler; {_SUPPORTED}"
    )


class CelerySchedules:
    """The timetables of a beat schedule's entries (entry name -> Celery schedule object).

    Implements :class:`~celery_kafka_beat.protocol.node.Schedule`. Every entry is converted up front, so an
    unsupported schedule fails at start-up (:class:`UnsupportedSchedule`, for the first bad entry).
    """

    def __init__(self, schedules: Mapping[str, object]) -> None:
        self._ticks: dict[str, TickFunction] = {name: tick_function(name, s) for name, s in schedules.items()}

    def next_tick(self, entry: str, prev: int, after: int) -> int | None:
        """The first tick of ``entry`` later than both ``prev`` and ``after``; ``None`` for an unknown entry."""
        tick = self._ticks.get(entry)
        return None if tick is None else tick(prev, after)


# --- intervals -------------------------------------------------------------------------------------------------


def _interval(name: str, delta: timedelta, *, relative: bool, tz: _Zone | None) -> TickFunction:
    micros = delta // timedelta(microseconds=1)
    if micros <= 0:
        raise UnsupportedSchedule(name, f"interval must be positive, got {delta}")
    period = max(1, (micros + 500) // 1000)  # whole ms, half up; a positive period never rounds to nothing
    if not relative:
        return _Every(period=period)
    assert tz is not None
    # Celery picks the resolution by the size of the period (celery.utils.time.delta_resolution), and truncates
    # anything shorter than a minute to the whole second.
    if micros >= _DAY_MS * 1000:
        return _RelativeDays(period=period, days=micros // (_DAY_MS * 1000), zone=tz)
    resolution = _HOUR_MS if micros >= _HOUR_MS * 1000 else _MINUTE_MS if micros >= _MINUTE_MS * 1000 else _SECOND_MS
    if micros < resolution * 1000:
        raise UnsupportedSchedule(name, f"relative interval {delta} is shorter than 1 s: it never advances")
    return _RelativeEvery(period=period, resolution=resolution, step=period // resolution * resolution, zone=tz)


@dataclass(frozen=True, slots=True)
class _Every:
    """Ticks ``prev + k * period``, ``k >= 1``."""

    period: int

    def __call__(self, prev: int, after: int) -> int | None:
        return prev + max(1, (after - prev) // self.period + 1) * self.period


@dataclass(frozen=True, slots=True)
class _RelativeEvery:
    """Celery's ``relative=True`` below a day: ``first = floor(prev + period)``, then ``first + k * step``."""

    period: int
    resolution: int
    step: int
    zone: _Zone

    def __call__(self, prev: int, after: int) -> int | None:
        end = prev + self.period
        # The start of the local hour/minute/second; > prev because period >= resolution.
        first = end - (end + self.zone.offset_ms(end)) % self.resolution
        return first + max(0, (after - first) // self.step + 1) * self.step


@dataclass(frozen=True, slots=True)
class _RelativeDays:
    """Celery's ``relative=True`` for a day or more: local midnights, ``days`` calendar days apart."""

    period: int
    days: int
    zone: _Zone

    def __call__(self, prev: int, after: int) -> int | None:
        threshold = max(prev, after)
        try:
            # Celery adds the period in wall-clock time for day resolutions, then rounds down to midnight.
            first_day = (self.zone.wall(prev) + timedelta(milliseconds=self.period)).date()
            # A local day is 24 h give or take a DST change, so the estimate is off by at most one step.
            k = max(0, (threshold - self._at(first_day, 0)) // (self.days * _DAY_MS))
            while k > 0 and self._at(first_day, k - 1) > threshold:
                k -= 1
            while (tick := self._at(first_day, k)) <= threshold:
                k += 1
        except OverflowError:  # past year 9999
            return None
        return tick

    def _at(self, first_day: date, k: int) -> int:
        day = first_day + timedelta(days=k * self.days)
        return self.zone.to_ms(datetime(day.year, day.month, day.day))


# --- crontab ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cron:
    """A crontab's field sets (sorted; weekdays 0 = Sunday), evaluated in ``zone``."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    zone: _Zone

    def __call__(self, prev: int, after: int) -> int | None:
        threshold = max(prev, after)
        try:
            wall = self.zone.wall(threshold).replace(second=0, microsecond=0) + _MINUTE
            limit = min(MAXYEAR, wall.year + _CRON_HORIZON_YEARS)
            # More than one round only in a repeated (fall-back) hour, whose first occurrences may be past.
            while (slot := self._next_slot(wall, limit)) is not None:
                tick = self.zone.to_ms(slot)
                if tick > threshold:
                    return tick
                wall = slot + _MINUTE
        except OverflowError:  # past year 9999
            pass
        return None

    def _next_slot(self, start: datetime, limit: int) -> datetime | None:
        """The first matching wall-clock time at or after ``start`` (whole minutes), in a year up to ``limit``."""
        year, month, day, hour, minute = start.year, start.month, start.day, start.hour, start.minute
        # Each pass either returns or moves the cursor to the start of the next month/day/hour that may match.
        while year <= limit:
            i = bisect_left(self.months, month)
            if i == len(self.months):
                year, month, day, hour, minute = year + 1, self.months[0], 1, 0, 0
                continue
            if self.months[i] != month:
                month, day, hour, minute = self.months[i], 1, 0, 0
            next_day = self._next_day(year, month, day)
            if next_day is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if next_day != day:
                day, hour, minute = next_day, 0, 0
            j = bisect_left(self.hours, hour)
            if j == len(self.hours):
                day, hour, minute = day + 1, 0, 0
                continue
            if self.hours[j] != hour:
                hour, minute = self.hours[j], 0
            k = bisect_left(self.minutes, minute)
            if k == len(self.minutes):
                hour, minute = hour + 1, 0
                continue
            return datetime(year, month, day, hour, self.minutes[k])
        return None

    def _next_day(self, year: int, month: int, day: int) -> int | None:
        """The first day of the month, at or after ``day``, whose day of month and weekday both match."""
        last = calendar.monthrange(year, month)[1]
        first_weekday = date(year, month, 1).isoweekday() % 7  # Sunday is 0, as in crontab
        for candidate in self.days_of_month[bisect_left(self.days_of_month, day) :]:
            if candidate > last:
                return None
            if (first_weekday + candidate - 1) % 7 in self.weekdays:
                return candidate
        return None


# --- solar -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SolarEvent:
    """How ephem finds one kind of solar event."""

    horizon: str  # the sun's altitude at the event, in ephem's degree notation
    method: str  # the Observer method that finds the next event
    use_center: bool  # the altitude of the sun's centre rather than of its upper limb


#: Celery's events, as Celery 5.6.3 and later define them (``solar._horizons``, ``_methods``, ``_use_center_l``).
#: Kept here rather than read from the schedule object: Celery before 5.6.3 had ``dusk_astronomical`` at +18.
_SOLAR_EVENTS: Final = {
    "dawn_astronomical": _SolarEvent(horizon="-18", method="next_rising", use_center=True),
    "dawn_nautical": _SolarEvent(horizon="-12", method="next_rising", use_center=True),
    "dawn_civil": _SolarEvent(horizon="-6", method="next_rising", use_center=True),
    "sunrise": _SolarEvent(horizon="-0:34", method="next_rising", use_center=False),
    "solar_noon": _SolarEvent(horizon="0", method="next_transit", use_center=False),
    "sunset": _SolarEvent(horizon="-0:34", method="next_setting", use_center=False),
    "dusk_civil": _SolarEvent(horizon="-6", method="next_setting", use_center=True),
    "dusk_nautical": _SolarEvent(horizon="-12", method="next_setting", use_center=True),
    "dusk_astronomical": _SolarEvent(horizon="-18", method="next_setting", use_center=True),
}


def _solar(name: str, sched: Any) -> TickFunction:
    try:
        ephem: Any = importlib.import_module("ephem")
    except ImportError as exc:
        raise UnsupportedSchedule(name, _EPHEM_MISSING) from exc
    event = _SOLAR_EVENTS.get(sched.event)
    if event is None:  # Celery refuses unknown events; a later Celery might add one
        raise UnsupportedSchedule(name, f"solar event {sched.event!r} is not supported by KafkaScheduler")
    cal = sched.cal
    return _Solar(
        ephem=ephem,
        method=event.method,
        use_center=event.use_center,
        lat=float(cal.lat),
        lon=float(cal.lon),
        elevation=float(cal.elevation),
        horizon=float(ephem.degrees(event.horizon)),
        pressure=float(cal.pressure),
        temperature=float(cal.temperature),
    )


@dataclass(frozen=True, slots=True)
class _Solar:
    """Celery 5.7's solar event search (``solar._next_event``) on a fresh observer: angles in radians."""

    ephem: Any
    method: str
    use_center: bool
    lat: float
    lon: float
    elevation: float
    horizon: float
    pressure: float
    temperature: float

    def __call__(self, prev: int, after: int) -> int | None:
        threshold = max(prev, after)
        # ephem's observers and bodies are mutable: fresh ones keep concurrent calls apart.
        observer = self.ephem.Observer()
        observer.lat, observer.lon, observer.elevation = self.lat, self.lon, self.elevation
        observer.horizon, observer.pressure, observer.temperature = self.horizon, self.pressure, self.temperature
        sun = self.ephem.Sun()
        start = self.ephem.Date(threshold / _DAY_MS + _EPHEM_UNIX_EPOCH)
        observer.date = start
        find = getattr(observer, self.method)
        kwargs = {"use_center": True} if self.use_center else {}
        for _ in range(_SOLAR_SEARCH_DAYS):
            try:
                event = find(sun, start=start, **kwargs)
            except self.ephem.CircumpolarError:  # no such event that day: polar day or night
                start = observer.next_antitransit(sun, start=start)
                continue
            tick = round((float(event) - _EPHEM_UNIX_EPOCH) * _DAY_MS)
            if tick > threshold:
                return tick
            start = self.ephem.Date(float(event) + _SOLAR_RESUME_DAYS)
        return None


# --- time zones ------------------------------------------------------------------------------------------------


def _zone_of(name: str, sched: Any) -> _Zone:
    tz = sched.tz
    if tz is None:
        return _Zone(UTC)
    if isinstance(tz, str):
        return _Zone(ZoneInfo(tz))
    if not isinstance(tz, tzinfo):
        raise UnsupportedSchedule(name, f"schedule timezone {tz!r} is not a tzinfo")
    if isinstance(tz, LocalTimezone):
        return _Zone(_MachineLocalTime())
    return _Zone(tz)


class _MachineLocalTime(tzinfo):
    """The machine's local time, converted by the C library with PEP 495 folds: what Celery's ``LocalTimezone``
    stands for. Celery uses ``LocalTimezone`` for ``enable_utc=False`` without a ``timezone`` before 5.6 (5.6
    uses tzlocal's zone, and ``LocalTimezone`` only if tzlocal fails). Its own UTC -> local conversion decides
    DST from the UTC fields read as local ones, so it is an hour off for as many hours as the UTC offset next to
    a DST change, and before 5.7 it put every time west of UTC a day ahead (celery/celery#10519)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        if dt is None:
            return timedelta(seconds=-_time.timezone)
        local = dt.replace(tzinfo=None, microsecond=0)
        # Naive timestamp(): the first occurrence (fold=0) or the second (fold=1); a skipped time with the offset
        # before the change.
        return local - datetime.fromtimestamp(local.timestamp(), UTC).replace(tzinfo=None)

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None

    def fromutc(self, dt: datetime) -> datetime:
        seconds = (dt.replace(tzinfo=None) - _EPOCH_NAIVE) // timedelta(seconds=1)
        # fromtimestamp sets fold=1 on the second occurrence of a repeated time.
        return datetime.fromtimestamp(seconds).replace(microsecond=dt.microsecond, tzinfo=self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _MachineLocalTime)

    def __hash__(self) -> int:
        return hash(_MachineLocalTime)


@dataclass(frozen=True, slots=True)
class _Zone:
    """Conversions between UTC milliseconds and naive local wall-clock times."""

    tz: tzinfo

    def wall(self, ms: int) -> datetime:
        """The local wall-clock time at instant ``ms``."""
        return (_EPOCH + timedelta(milliseconds=ms)).astimezone(self.tz).replace(tzinfo=None)

    def offset_ms(self, ms: int) -> int:
        """The UTC offset at instant ``ms``."""
        offset = (_EPOCH + timedelta(milliseconds=ms)).astimezone(self.tz).utcoffset()
        return 0 if offset is None else offset // _MS

    def to_ms(self, wall: datetime) -> int:
        """The instant of wall-clock time ``wall`` with ``fold=0``: the first occurrence of a repeated time, and
        for a skipped time the instant given by the offset before the change."""
        if isinstance(self.tz, ZoneInfo | timezone):  # PEP 495 semantics, exactly
            return (wall.replace(tzinfo=self.tz) - _EPOCH) // _MS
        return self._to_ms_probing(wall)

    def _to_ms_probing(self, wall: datetime) -> int:
        """``to_ms`` for any tzinfo whose UTC -> local conversion is right (pytz's, say, whose fold handling is
        not), from the offsets a day either side; assumes at most one offset change within that window."""
        local = (wall - _EPOCH_NAIVE) // _MS
        before = self.offset_ms(local - _DAY_MS)
        valid = [local - o for o in {before, self.offset_ms(local + _DAY_MS)} if self.offset_ms(local - o) == o]
        return min(valid) if valid else local - before
