"""Cron on DST days: one occurrence per local day and matching wall time, in
every IANA zone that changes its clocks in 2027-2030."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest

from sop_templates.timing import CronTiming, cron_occurrences, local_to_utc

LONDON = ZoneInfo("Europe/London")


@cache
def _transitions() -> dict[str, list[datetime]]:
    """Every zone's clock changes in 2027-2030, as UTC instants (to the minute)."""
    out: dict[str, list[datetime]] = {}
    start = datetime(2027, 1, 1, tzinfo=UTC)
    for name in sorted(available_timezones()):
        zone = ZoneInfo(name)
        found = []
        previous = start.astimezone(zone).utcoffset()
        for week in range(1, 4 * 53):  # clocks change at most once a week
            at = start + timedelta(weeks=week)
            offset = at.astimezone(zone).utcoffset()
            if offset != previous:  # the change is in the last week: find its minute
                lo, hi = at - timedelta(weeks=1), at
                while hi - lo > timedelta(minutes=1):
                    mid = lo + (hi - lo) / 2
                    if mid.astimezone(zone).utcoffset() == previous:
                        lo = mid
                    else:
                        hi = mid
                found.append(hi.replace(second=0, microsecond=0))
                previous = offset
        if found:
            out[name] = found
    return out


def _wall_times(zone: ZoneInfo, change: datetime) -> tuple[date, list[time]]:
    """The local day of a clock change and wall times before, inside and after it."""
    before = (change - timedelta(microseconds=1)).astimezone(zone).replace(tzinfo=None)
    after = change.astimezone(zone).replace(tzinfo=None)
    before = before.replace(second=0, microsecond=0) + timedelta(minutes=1)
    low, high = min(before, after), max(before, after)
    picks = [low - timedelta(hours=1), low, low + (high - low) / 2, high, high + timedelta(hours=1)]
    return after.date(), sorted({p.replace(second=0, microsecond=0).time() for p in picks})


def _exists(wall: datetime, zone: ZoneInfo) -> bool:
    return local_to_utc(wall, zone).astimezone(zone).replace(tzinfo=None) == wall


def test_every_zone_with_dst_fires_once_per_local_day_at_each_wall_time():
    zones = _transitions()
    assert {"Europe/London", "America/Santiago", "Australia/Lord_Howe"} <= set(zones)
    checked = 0
    for name, changes in zones.items():
        zone = ZoneInfo(name)
        for change in changes:
            day, walls = _wall_times(zone, change)
            days = [day - timedelta(days=1), day, day + timedelta(days=1)]
            after = local_to_utc(datetime.combine(days[0], time(0)), zone) - timedelta(seconds=1)
            until = local_to_utc(datetime.combine(days[-1], time(23, 59)), zone)
            for wall in walls:
                timing = CronTiming(cron=f"{wall.minute} {wall.hour} * * *")
                got = cron_occurrences(timing, zone, after, until)
                where = f"{name} {wall:%H:%M} around {change:%Y-%m-%d %H:%M}Z: {got}"
                assert len(got) == len(set(got)) == 3, where
                for local_day, instant in zip(days, got, strict=True):
                    moment = datetime.combine(local_day, wall)
                    reading = instant.astimezone(zone).replace(tzinfo=None)
                    if _exists(moment, zone):
                        assert reading == moment, where  # its own wall time, never dropped
                        first = moment.replace(tzinfo=zone, fold=0).astimezone(UTC)
                        assert instant == first, where  # a repeated time: the first instant
                    else:  # inside a gap: moved forward by the gap, once
                        gap = (
                            moment.replace(tzinfo=zone, fold=1).utcoffset()
                            - moment.replace(tzinfo=zone, fold=0).utcoffset()
                        )
                        assert reading == moment + gap, where
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("zone", "cron", "day", "expected"),
    [
        # 01:30 happens twice in London on 2027-10-31: once, BST
        ("Europe/London", "30 1 * * *", date(2027, 10, 31), ["01:30+01:00"]),
        # ... and not at all on 2027-03-28: 02:30 BST, once
        ("Europe/London", "30 1 * * *", date(2027, 3, 28), ["02:30+01:00"]),
        ("America/Santiago", "30 23 * * *", date(2027, 4, 3), ["23:30-03:00"]),
        ("Australia/Lord_Howe", "45 1 * * *", date(2027, 4, 4), ["01:45+11:00"]),
        # every half hour through New York's gap: 02:00 and 02:30 land on 03:00, 03:30
        ("America/New_York", "*/30 1-3 * * *", date(2027, 3, 14),
         ["01:00-05:00", "01:30-05:00", "03:00-04:00", "03:30-04:00"]),
    ],
)  # fmt: skip
def test_dst_nights_the_issue_names(zone, cron, day, expected):
    tz = ZoneInfo(zone)
    start = datetime.combine(day, time(0), tzinfo=tz)
    got = cron_occurrences(CronTiming(cron=cron), tz, start, start + timedelta(hours=24))
    assert [
        o.astimezone(tz).isoformat()[11:16] + o.astimezone(tz).isoformat()[-6:] for o in got
    ] == expected


def test_an_every_minute_cron_over_the_fall_back_night_is_cheap_and_unique():
    night = datetime(2027, 10, 30, 23, 0, tzinfo=UTC)
    got = cron_occurrences(CronTiming(cron="* * * * *"), LONDON, night, night + timedelta(hours=4))
    assert len(got) == len(set(got)) == 4 * 60 - 60  # 01:00-01:59 GMT repeats BST's hour
