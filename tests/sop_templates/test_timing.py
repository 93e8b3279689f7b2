"""Due-time arithmetic, including the documented DST rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sop_templates.timing import (
    AtTiming,
    CronTiming,
    DayAtTiming,
    OffsetTiming,
    cron_occurrences,
    due_at,
    parse_duration,
    parse_timing,
)

NY = ZoneInfo("America/New_York")
SH = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0m", timedelta(0)),
        ("+0", timedelta(0)),
        ("3h", timedelta(hours=3)),
        ("2d", timedelta(days=2)),
        ("1d6h", timedelta(days=1, hours=6)),
        ("90m", timedelta(minutes=90)),
        ("+20s", timedelta(seconds=20)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1h", "negative"),
        ("3x", "not a duration"),
        ("", "not a duration"),
        ("h", "not a duration"),
    ],
)
def test_bad_durations_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_compact_timing_forms():
    assert parse_timing("day 2 20:00") == {"kind": "day_at", "day": 2, "at": "20:00"}
    assert parse_timing("cron 0 11 * * *") == {"kind": "cron", "cron": "0 11 * * *"}
    assert parse_timing("+3h") == {"kind": "offset", "offset": "+3h"}
    assert parse_timing({"day": 1, "at": "09:00"})["kind"] == "day_at"


def test_day_one_is_the_anchor_local_date():
    # 2027-03-01 23:30 Shanghai is still 15:30 UTC on the same date; day 1 is 03-01 local
    anchor = datetime(2027, 3, 1, 15, 30, tzinfo=UTC)
    assert due_at(DayAtTiming(day=1, at="20:00"), anchor, SH) == datetime(
        2027, 3, 1, 12, 0, tzinfo=UTC
    )
    assert due_at(DayAtTiming(day=3, at="09:00"), anchor, SH) == datetime(
        2027, 3, 3, 1, 0, tzinfo=UTC
    )


def test_spring_forward_gap_moves_forward_by_the_gap():
    # 2027-03-14 02:30 does not exist in New York (clocks jump 02:00 → 03:00):
    # it means 03:30 EDT, i.e. 07:30 UTC.
    anchor = datetime(2027, 3, 14, 12, 0, tzinfo=UTC)
    due = due_at(DayAtTiming(day=1, at="02:30"), anchor, NY)
    assert due == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    assert due.astimezone(NY).strftime("%H:%M %Z") == "03:30 EDT"


def test_fall_back_overlap_takes_the_first_instant():
    # 2027-11-07 01:30 happens twice in New York; it means the first (EDT) one.
    anchor = datetime(2027, 11, 7, 12, 0, tzinfo=UTC)
    due = due_at(DayAtTiming(day=1, at="01:30"), anchor, NY)
    assert due == datetime(2027, 11, 7, 5, 30, tzinfo=UTC)
    assert due.astimezone(NY).strftime("%H:%M %Z") == "01:30 EDT"


def test_day_at_across_dst_keeps_local_wall_time():
    anchor = datetime(2027, 3, 13, 15, 0, tzinfo=UTC)  # 10:00 EST on the 13th
    before = due_at(DayAtTiming(day=1, at="20:00"), anchor, NY)
    after = due_at(DayAtTiming(day=2, at="20:00"), anchor, NY)
    assert before.astimezone(NY).hour == after.astimezone(NY).hour == 20
    assert after - before == timedelta(hours=23)


def test_offset_is_absolute_elapsed_time_even_across_dst():
    anchor = datetime(2027, 3, 14, 6, 0, tzinfo=UTC)  # 01:00 EST
    assert due_at(OffsetTiming(offset="3h"), anchor, NY) == anchor + timedelta(hours=3)


def test_absolute_local_time():
    timing = AtTiming(at=datetime(2027, 5, 1, 10, 0))
    assert due_at(timing, datetime(2027, 3, 1, tzinfo=UTC), SH) == datetime(
        2027, 5, 1, 2, 0, tzinfo=UTC
    )


def test_cron_in_new_york_over_dst():
    occurrences = cron_occurrences(
        CronTiming(cron="0 9 * * *"),
        NY,
        datetime(2027, 3, 13, tzinfo=UTC),
        datetime(2027, 3, 16, tzinfo=UTC),
    )
    assert [o.astimezone(NY).strftime("%d %H:%M %Z") for o in occurrences] == [
        "13 09:00 EST",
        "14 09:00 EDT",
        "15 09:00 EDT",
    ]


def test_cron_weekday_numbers_mean_what_crontab_means():
    # crontab: 0 = Sunday, 1-5 = Monday..Friday (APScheduler 3 alone would shift them)
    week = (datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 8, tzinfo=UTC))
    sundays = cron_occurrences(CronTiming(cron="0 9 * * 0"), SH, *week)
    weekdays = cron_occurrences(CronTiming(cron="0 9 * * 1-5"), SH, *week)
    assert [d.astimezone(SH).strftime("%a") for d in sundays] == ["Sun"]
    assert [d.astimezone(SH).strftime("%a") for d in weekdays] == [
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
    ]


def test_cron_start_and_end_bound_the_schedule():
    timing = CronTiming(cron="0 11 * * *", start=datetime(2027, 3, 2), end=datetime(2027, 3, 4))
    got = cron_occurrences(
        timing, SH, datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 10, tzinfo=UTC)
    )
    assert [d.astimezone(SH).day for d in got] == [2, 3]


def test_one_reading_of_a_date_time_without_offset():
    from sop_templates.timing import as_instant, parse_instant

    assert parse_instant("2027-03-01 09:00", SH) == datetime(2027, 3, 1, 1, 0, tzinfo=UTC)
    assert parse_instant("2027-03-01T09:00:00+00:00", SH) == datetime(2027, 3, 1, 9, tzinfo=UTC)
    # a wall time inside New York's spring-forward gap: moved forward by the gap
    assert as_instant(datetime(2027, 3, 14, 2, 30), NY) == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date-time"):
        parse_instant("yesterday", SH)
