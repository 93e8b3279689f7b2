"""Timing rules and the arithmetic that turns them into UTC instants.

Four kinds (operators' words in brackets):

* ``offset``  – a duration after the anchor (加好友后 X 小时): ``0m``, ``3h``, ``1d6h``.
* ``day_at``  – day N at HH:MM in the template's zone (第 N 天 HH:MM); day 1 is the
  anchor's local calendar date.
* ``at``      – one absolute local date-time (指定时间).
* ``cron``    – a fixed schedule (周期), five-field cron in the template's zone,
  optionally bounded by start/end.

DST rules (documented in the README, tested in tests/sop_templates/test_timing.py):
a local time that does not exist (inside a spring-forward gap) is moved forward
by the length of the gap (02:30 → 03:30); a local time that happens twice (in a
fall-back overlap) means the first, earlier instant. Both are what ``zoneinfo``
gives with ``fold=0``; we rely on it deliberately. Cron follows the same rule per
local calendar day (``cron_occurrences``): each matching wall time fires once.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sopbot.clock import get_zone as get_zone  # re-exported: templates read zones here
from sopbot.ids import is_id

# Every timing must be computable: nothing falls due more than ten years after its
# anchor, and dates lie in a range every instant (plus grace) can be stored in.
MAX_AHEAD = timedelta(days=3660)
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2199, 12, 31)

_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


@lru_cache(maxsize=1024)
def parse_duration(text: str) -> timedelta:
    """Parse ``1d6h``, ``3h``, ``90m``, ``0m``, ``30s`` (a leading ``+`` is allowed)."""
    raw = str(text).strip().replace(" ", "").lower()
    if raw.startswith("-"):
        raise ValueError(f"offset {text!r} is negative; touchpoints cannot fire before the anchor")
    raw = raw.removeprefix("+")
    if raw == "0":
        return timedelta(0)
    match = _DURATION.match(raw)
    if not raw or not match:
        raise ValueError(f"offset {text!r} is not a duration like 0m, 3h, 2d or 1d6h")
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    seconds = (
        parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
    ) + parts.get("s", 0)
    if seconds > MAX_AHEAD.total_seconds():
        raise ValueError(
            f"offset {text!r} is more than ten years ({MAX_AHEAD.days}d); "
            "a touchpoint must fall due within that"
        )
    return timedelta(
        days=parts.get("d", 0),
        hours=parts.get("h", 0),
        minutes=parts.get("m", 0),
        seconds=parts.get("s", 0),
    )


def format_duration(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    if total == 0:
        return "0m"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    out = ""
    for value, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")):
        if value:
            out += f"{value}{unit}"
    return out


def in_range(value: datetime, what: str) -> datetime:
    """``value`` if it lies between 1970 and 2199 (so it can be computed with and
    stored), else a ValueError naming ``what``."""
    naive = value.replace(tzinfo=None)
    if not EARLIEST <= naive <= LATEST:
        raise ValueError(
            f"{what} {value.isoformat(timespec='minutes')} is outside "
            f"{EARLIEST.year}-{LATEST.year}; no touchpoint can be computed from it"
        )
    return value


def parse_hhmm(text: str) -> time:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(text).strip())
    if not match:
        raise ValueError(f"time {text!r} is not HH:MM (00:00–23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def local_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in ``zone`` → the UTC instant, with the DST rules above."""
    aware = local.replace(tzinfo=zone, fold=0)
    return aware.astimezone(UTC)


def as_instant(value: datetime, zone: ZoneInfo) -> datetime:
    """The one reading of a date-time everywhere (enroll API and CLI anchors,
    timeline samples, ``at`` timings, fixed starts): with a UTC offset it is that
    instant; without one it is wall-clock time in the template's ``zone``."""
    return value.astimezone(UTC) if value.tzinfo is not None else local_to_utc(value, zone)


def parse_instant(text: str, zone: ZoneInfo) -> datetime:
    """``2027-03-01 21:30`` / ``2027-03-01T21:30:00+08:00`` → UTC, by :func:`as_instant`."""
    try:
        value = datetime.fromisoformat(str(text).strip().replace(" ", "T", 1))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date-time like 2027-03-01 21:30 (template time) "
            "or 2027-03-01T21:30:00+08:00"
        ) from None
    return as_instant(value, zone)


class OffsetTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["offset"] = "offset"
    offset: str = Field(description="duration after the anchor: 0m, 3h, 2d, 1d6h")

    @field_validator("offset", mode="before")
    @classmethod
    def _valid_offset(cls, value: object) -> str:
        return format_duration(parse_duration(str(value)))

    @property
    def delta(self) -> timedelta:
        return parse_duration(self.offset)

    def describe(self) -> str:
        return f"+{self.offset}"


class DayAtTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["day_at"] = "day_at"
    day: int = Field(description="day N, where day 1 is the anchor's local date")
    at: str = Field(description="local HH:MM")

    @field_validator("day")
    @classmethod
    def _day_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"day {value} does not exist: day 1 is the anchor's own date")
        if value > MAX_AHEAD.days:
            raise ValueError(f"day {value} is more than ten years ({MAX_AHEAD.days} days) away")
        return value

    @field_validator("at")
    @classmethod
    def _valid_at(cls, value: str) -> str:
        return parse_hhmm(value).strftime("%H:%M")

    def describe(self) -> str:
        return f"day {self.day} {self.at}"


class AtTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["at"] = "at"
    at: datetime = Field(description="local date-time in the template zone (or with an offset)")

    @field_validator("at")
    @classmethod
    def _at_in_range(cls, value: datetime) -> datetime:
        return in_range(value, "at")

    def describe(self) -> str:
        return f"at {self.at.isoformat(timespec='minutes')}"


class CronTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["cron"] = "cron"
    cron: str = Field(description="five-field cron in the template zone, e.g. '0 11 * * *'")
    start: datetime | None = None
    end: datetime | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        value = " ".join(str(value).split())
        fields = value.split(" ")
        if len(fields) != 5:
            raise ValueError(
                f"cron {value!r} needs 5 fields (minute hour day month weekday), got {len(fields)}"
            )
        _check_cron(value)
        return value

    @field_validator("start", "end")
    @classmethod
    def _bound_in_range(cls, value: datetime | None) -> datetime | None:
        return None if value is None else in_range(value, "cron start/end")

    @model_validator(mode="after")
    def _ordered(self) -> CronTiming:
        if self.start and self.end and self.end <= self.start:
            raise ValueError("cron end must be after its start")
        return self

    def describe(self) -> str:
        return f"cron {self.cron}"


_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _crontab_dow(field: str) -> str:
    """Translate a crontab day-of-week field (0 or 7 = Sunday) into names.

    APScheduler 3 numbers weekdays from Monday = 0 (its FAQ calls this a historical
    mistake, fixed only in 4.x), so numbers are never passed through as they are.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if spec == "*":
            lo, hi = 0, 6
        elif "-" in spec:
            a, b = spec.split("-", 1)
            lo, hi = _dow_number(a), _dow_number(b)
        else:
            lo = hi = _dow_number(spec)
            if step_text:
                hi = 6
        if step < 1 or lo > hi:
            raise ValueError(f"day-of-week {item!r} is not a valid range")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _dow_number(token: str) -> int:
    if token in _DOW_NAMES:
        return _DOW_NAMES.index(token)
    if is_id(token) and 0 <= int(token) <= 7:
        return int(token)
    raise ValueError(f"day-of-week {token!r} must be 0-7 or sun..sat")


@lru_cache(maxsize=1024)
def _check_cron(value: str) -> None:
    try:
        _cron_trigger(value, ZoneInfo("UTC"))
        _wall_times(value)
    except ValueError as exc:
        raise ValueError(f"cron {value!r} is not valid: {exc}") from exc
    if cron_never_fires(value):
        raise ValueError(f"cron {value!r} never fires: no calendar has such a day")


def _cron_trigger(expr: str, zone: ZoneInfo) -> CronTrigger:
    """APScheduler's reading of the expression: used to check its syntax."""
    minute, hour, day, month, dow = expr.split(" ")
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_dow(dow),
        timezone=zone,
    )


# -- cron by local calendar day ------------------------------------------------------
#
# A cron expression names wall-clock times on calendar days. Chaining a zone-aware
# trigger through a DST change finds a fall-back time twice (and loops on it) and
# a spring-forward time never; instead the days are matched in UTC (where no day
# has a gap or an overlap) and each day's wall times are turned into instants by
# ``local_to_utc`` -- the rule every one-off time follows.

_NO_DST = ZoneInfo("UTC")
_ITEM = re.compile(r"^(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?$")


def _clock_field(text: str, top: int, name: str) -> tuple[int, ...]:
    """The values of a minute (``top`` 59) or hour (23) field: ``*``, ``*/n``,
    ``a``, ``a-b``, ``a-b/n``, and lists of these."""
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(f"{name} {item!r} is not a number, range or step")
        star, first, last, step_text = match.groups()
        step = int(step_text) if step_text else 1
        lo = 0 if star else int(first)
        hi = top if star or (step_text and last is None) else int(last or first)
        if step < 1 or lo > hi or hi > top:
            raise ValueError(f"{name} {item!r} is outside 0-{top}")
        values.update(range(lo, hi + 1, step))
    return tuple(sorted(values))


@lru_cache(maxsize=1024)
def _wall_times(expr: str) -> tuple[time, ...]:
    """Every wall-clock time of a day the expression fires at, in order."""
    minute, hour = expr.split(" ")[:2]
    minutes = _clock_field(minute, 59, "minute")
    return tuple(time(h, m) for h in _clock_field(hour, 23, "hour") for m in minutes)


@lru_cache(maxsize=1024)
def _day_trigger(expr: str, years: str | None = None) -> CronTrigger:
    """Fires at 00:00 UTC on every calendar day the expression's day fields match."""
    _, _, day, month, dow = expr.split(" ")
    return CronTrigger(
        year=years,
        minute=0,
        hour=0,
        day=day,
        month=month,
        day_of_week=_crontab_dow(dow),
        timezone=_NO_DST,
    )


def cron_never_fires(expr: str) -> bool:
    """True for a day combination no calendar has (``0 11 31 2 *``). Weekdays and
    leap days repeat every 28 years, so one such stretch is searched."""
    probe = _day_trigger(expr, "2028-2056")
    return probe.get_next_fire_time(None, datetime(2028, 1, 1, tzinfo=_NO_DST)) is None


def _matching_days(expr: str, first: date, last: date) -> list[date]:
    every_day = expr.split(" ")[2:] == ["*", "*", "*"]
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    if every_day:
        return days
    return [day for day in days if day in _days_of_year(expr, day.year)]


@lru_cache(maxsize=256)
def _days_of_year(expr: str, year: int) -> frozenset[date]:
    """The calendar days of ``year`` the expression's day fields match."""
    trigger, days = _day_trigger(expr), set()
    cursor = datetime(year, 1, 1, tzinfo=_NO_DST)
    previous: datetime | None = None
    while (fire := trigger.get_next_fire_time(previous, cursor)) is not None:
        if fire.year != year:
            break
        days.add(fire.date())
        previous, cursor = fire, fire + timedelta(days=1)
    return frozenset(days)


Timing = Annotated[OffsetTiming | DayAtTiming | AtTiming | CronTiming, Field(discriminator="kind")]

_DAY_AT_TEXT = re.compile(r"^day\s*(-?\d+)\s+(\S+)$", re.I)


def parse_timing(value: object) -> dict[str, object]:
    """Accept the compact strings operators type as well as the dict form.

    ``"+3h"`` / ``"3h"`` → offset; ``"day 2 20:00"`` → day_at;
    ``"at 2027-03-05 10:00"`` → at; ``"cron 0 11 * * *"`` → cron.
    """
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        if "kind" in value:
            return value
        for kind, key in (("cron", "cron"), ("day_at", "day"), ("offset", "offset"), ("at", "at")):
            if key in value:
                return {"kind": kind, **value}
        raise ValueError("timing needs one of: offset, day + at, at, cron")
    if not isinstance(value, str):
        raise ValueError(f"timing {value!r} is not understood")
    text = value.strip()
    lower = text.lower()
    if lower.startswith("cron "):
        return {"kind": "cron", "cron": text[5:].strip()}
    if lower.startswith("at "):
        return {"kind": "at", "at": text[3:].strip()}
    match = _DAY_AT_TEXT.match(text)
    if match:
        return {"kind": "day_at", "day": int(match.group(1)), "at": match.group(2)}
    return {"kind": "offset", "offset": text}


def due_at(
    timing: OffsetTiming | DayAtTiming | AtTiming, anchor_at: datetime, zone: ZoneInfo
) -> datetime:
    """The UTC instant a one-off touchpoint falls due for a target anchored at ``anchor_at``."""
    try:
        return _due_at(timing, anchor_at, zone)
    except OverflowError:
        raise ValueError(
            f"anchor {anchor_at.isoformat(timespec='minutes')} is too far in the future "
            f"for {timing.describe()}"
        ) from None


def _due_at(
    timing: OffsetTiming | DayAtTiming | AtTiming, anchor_at: datetime, zone: ZoneInfo
) -> datetime:
    if isinstance(timing, OffsetTiming):
        return anchor_at + timing.delta
    if isinstance(timing, DayAtTiming):
        local_date = anchor_at.astimezone(zone).date()
        return _day_at(local_date, timing.day, timing.at, zone)
    if isinstance(timing, AtTiming):
        return as_instant(timing.at, zone)
    raise TypeError(f"{timing!r} has no single due time")


@lru_cache(maxsize=65536)
def _day_at(local_date: date, day: int, at: str, zone: ZoneInfo) -> datetime:
    target = local_date + timedelta(days=day - 1)
    return local_to_utc(datetime.combine(target, parse_hhmm(at)), zone)


# A wall time's instant is at most this far from the instant whose local reading it
# is (UTC offsets lie within -12h..+14h; a DST gap or overlap is at most a day).
_WALL_MARGIN = timedelta(hours=27)


def cron_occurrences(
    timing: CronTiming, zone: ZoneInfo, after: datetime, until: datetime, limit: int = 100_000
) -> list[datetime]:
    """Cron fire times in (after, until], as UTC instants, earliest first.

    Computed per local calendar day in ``zone``: every matching wall time of a
    matching day fires once, by the rule of one-off times (a time that happens
    twice fires at its first instant; a time inside a spring-forward gap is moved
    forward by the gap, and two times moved onto the same instant fire once).
    The work is bounded by the days and wall times in the window, whatever the zone.
    """
    if until <= after:
        return []
    low, high = after, until
    if timing.start is not None:
        low = max(low, as_instant(timing.start, zone) - timedelta(microseconds=1))
    if timing.end is not None:
        high = min(high, as_instant(timing.end, zone))
    if high <= low:
        return []
    wall_low = low.astimezone(UTC).replace(tzinfo=None) - _WALL_MARGIN
    wall_high = high.astimezone(UTC).replace(tzinfo=None) + _WALL_MARGIN
    times = _wall_times(timing.cron)
    found: set[datetime] = set()
    last_day: date | None = None
    for day in _matching_days(timing.cron, wall_low.date(), wall_high.date()):
        if last_day is not None and len(found) >= limit and day > last_day + timedelta(days=2):
            break  # later days cannot come before what is already found
        first = bisect_left(times, wall_low.time()) if day == wall_low.date() else 0
        stop = bisect_right(times, wall_high.time()) if day == wall_high.date() else len(times)
        for clock in times[first:stop]:
            instant = local_to_utc(datetime.combine(day, clock), zone)
            if low < instant <= high:
                found.add(instant)
        if len(found) >= limit and last_day is None:
            last_day = day
    return sorted(found)[:limit]
