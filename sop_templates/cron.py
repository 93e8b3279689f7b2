"""Five-field cron in a template's zone, by local calendar day.

The parsing rules (crontab day-of-week numbers, which APScheduler 3 counts from
Monday) and the triggers ``sop_templates.timing`` builds its cron occurrences
from: each matching wall time of a local day fires once (the DST rule of
``timing``'s docstring).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from sopbot.ids import is_id

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
def check_cron(value: str) -> None:
    try:
        cron_trigger(value, ZoneInfo("UTC"))
        wall_times(value)
    except ValueError as exc:
        raise ValueError(f"cron {value!r} is not valid: {exc}") from exc
    if cron_never_fires(value):
        raise ValueError(f"cron {value!r} never fires: no calendar has such a day")


def cron_trigger(expr: str, zone: ZoneInfo) -> CronTrigger:
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
def wall_times(expr: str) -> tuple[time, ...]:
    """Every wall-clock time of a day the expression fires at, in order."""
    minute, hour = expr.split(" ")[:2]
    minutes = _clock_field(minute, 59, "minute")
    return tuple(time(h, m) for h in _clock_field(hour, 23, "hour") for m in minutes)


@lru_cache(maxsize=1024)
def day_trigger(expr: str, years: str | None = None) -> CronTrigger:
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
    probe = day_trigger(expr, "2028-2056")
    return probe.get_next_fire_time(None, datetime(2028, 1, 1, tzinfo=_NO_DST)) is None


def matching_days(expr: str, first: date, last: date) -> list[date]:
    every_day = expr.split(" ")[2:] == ["*", "*", "*"]
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    if every_day:
        return days
    return [day for day in days if day in days_of_year(expr, day.year)]


@lru_cache(maxsize=256)
def days_of_year(expr: str, year: int) -> frozenset[date]:
    """The calendar days of ``year`` the expression's day fields match."""
    trigger, days = day_trigger(expr), set()
    cursor = datetime(year, 1, 1, tzinfo=_NO_DST)
    previous: datetime | None = None
    while (fire := trigger.get_next_fire_time(previous, cursor)) is not None:
        if fire.year != year:
            break
        days.add(fire.date())
        previous, cursor = fire, fire + timedelta(days=1)
    return frozenset(days)
