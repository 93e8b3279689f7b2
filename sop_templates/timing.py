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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sop_templates.cron import check_cron, matching_days, wall_times
from sopbot.clock import get_zone as get_zone  # re-exported: templates read zones here

# Every timing must be computable: nothing falls due more than ten years after its
# anchor, and dates lie in a range every instant (plus grace) can be stored in.
MAX_AHEAD = timedelta(days=3660)
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2199, 12, 31)

_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


# Operators' units: 3小时, 30分钟, 2天, 1天6小时, 3 hours, 2 days, 90 min.
_UNIT_WORDS = (
    ("小时", "h"),
    ("个小时", "h"),
    ("钟头", "h"),
    ("分钟", "m"),
    ("分", "m"),
    ("秒钟", "s"),
    ("秒", "s"),
    ("天", "d"),
    ("日", "d"),
    ("hours", "h"),
    ("hour", "h"),
    ("hrs", "h"),
    ("hr", "h"),
    ("minutes", "m"),
    ("minute", "m"),
    ("mins", "m"),
    ("min", "m"),
    ("seconds", "s"),
    ("second", "s"),
    ("secs", "s"),
    ("sec", "s"),
    ("days", "d"),
    ("day", "d"),
)
_UNIT_RE = re.compile(
    r"(\d+)\s*("
    + "|".join(sorted((re.escape(w) for w, _ in _UNIT_WORDS), key=len, reverse=True))
    + ")"
)
_UNIT_OF = dict(_UNIT_WORDS)
_AFTER_WORDS = re.compile(r"^(?:(?:加好友|打标签|开始|进群|入群|加入|进入sop|进入)后|after)")


def _plain_units(raw: str) -> str:
    """``1天6小时`` → ``1d6h``; text without unit words is returned as it is."""
    raw = raw.replace("个小时", "小时").replace("半小时", "30分钟")
    return _UNIT_RE.sub(lambda m: m.group(1) + _UNIT_OF[m.group(2)], raw)


@lru_cache(maxsize=1024)
def parse_duration(text: str) -> timedelta:
    """Parse ``1d6h``, ``3h``, ``90m``, ``0m``, ``30s`` (a leading ``+`` is allowed),
    and operators' words: ``3小时``, ``30分钟``, ``2天``, ``1天6小时``, ``3 hours``."""
    raw = _plain_units(str(text).strip().lower()).replace(" ", "")
    raw = _AFTER_WORDS.sub("", raw)
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


_CLOCK_WORDS = re.compile(
    r"^(?P<half>上午|早上|早晨|中午|下午|晚上|傍晚)?\s*(?P<h>\d{1,2})\s*(?:点|时)\s*(?:(?P<half2>半)|(?P<m>\d{1,2})\s*分?)?$"
)


def _clock_text(text: str) -> str:
    """``20点`` → ``20:00``, ``晚上8点半`` → ``20:30``, ``9:05`` / ``9：05`` → ``9:05``."""
    raw = str(text).strip().replace("：", ":")
    match = _CLOCK_WORDS.match(raw)
    if not match:
        return raw
    hour = int(match.group("h"))
    minute = 30 if match.group("half2") else int(match.group("m") or 0)
    if match.group("half") in ("下午", "晚上", "傍晚") and hour < 12:
        hour += 12
    return f"{hour}:{minute:02d}"


def parse_hhmm(text: str) -> time:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", _clock_text(str(text)))
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
        check_cron(value)
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


Timing = Annotated[OffsetTiming | DayAtTiming | AtTiming | CronTiming, Field(discriminator="kind")]

_DAY_AT_TEXT = re.compile(r"^day\s*(-?\d+)\s+(\S+)$", re.I)

# -- operators' shorthand -------------------------------------------------------------
#
# What people type: 3小时 / 3h / 30分钟 (offset); 20点 / 第2天 20:00 / 次日 9点 (day N at);
# 每天 11:00 / 工作日 11:30 / 每周一三五 9:00 / 周末 10点 / 每月1号 10:00 /
# 每月最后一天 20:00 (repeat, stored as cron); 2027-03-05 10:00 (one date-time).

_WEEKDAY_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "日": 0, "天": 0, "七": 0}
_EN_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_TIME = r"(?P<time>(?:上午|早上|早晨|中午|下午|晚上|傍晚)?\s*\d{1,2}(?:\s*[:：]\s*\d{2}|\s*[点时](?:\s*半|\s*\d{1,2}\s*分?)?))"
_CN_NUM = {
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
    "十": 10,
}
_SH_DAY = re.compile(
    r"^(?:第\s*(?P<n>\d+|[一二两三四五六七八九十])\s*天|(?P<word>当天|今天|次日|第二天|明天|隔天))\s*"
    + _TIME
    + "$"
)
_SH_CLOCK = re.compile(r"^(?:当天\s*)?" + _TIME + "$")
_SH_DAILY = re.compile(r"^(?:每天|每日|daily|every\s*day)\s*" + _TIME + "$", re.I)
_SH_WORKDAYS = re.compile(
    r"^(?:每个?工作日|工作日|周一至周五|周一到周五|weekdays|every\s*weekday)\s*" + _TIME + "$", re.I
)
_SH_WEEKEND = re.compile(r"^(?:每个?周末|周末|weekends?)\s*" + _TIME + "$", re.I)
_SH_WEEKLY = re.compile(
    r"^(?:每)?(?:周|星期|礼拜)(?P<days>[一二三四五六日天七、，,和及 ]+)\s*" + _TIME + "$"
)
_SH_WEEKLY_EN = re.compile(
    r"^every\s+(?P<days>(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*(?:\s*,\s*(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*)*)\s+(?P<time>\d{1,2}:\d{2})$",
    re.I,
)
_SH_MONTHLY = re.compile(
    r"^每月\s*(?:(?P<dom>\d{1,2})\s*[号日]|(?P<last>最后一天|月底|末))\s*" + _TIME + "$"
)
_SH_DATETIME = re.compile(
    r"^(?:at\s+|指定时间\s*)?(?P<date>\d{4}-\d{1,2}-\d{1,2})[ T]+" + _TIME + "$", re.I
)


def _hhmm_of(text: str) -> time:
    return parse_hhmm(re.sub(r"\s+", "", text))


def _cron_at(clock: time, day: str = "*", dow: str = "*") -> str:
    return f"{clock.minute} {clock.hour} {day} * {dow}"


def parse_shorthand(text: str) -> dict[str, object] | None:
    """Operators' shorthand → a timing dict, or None when ``text`` is not shorthand.

    ``3小时``/``3h``/``+3h``/``30分钟`` → offset; ``20点``/``第2天 20:00``/``次日 9点`` →
    day N at; ``每天 11:00``/``工作日 11:30``/``每周一 09:00``/``每月最后一天 20:00`` → cron;
    ``2027-03-05 10:00`` → at. A time that is not a clock time raises ValueError.
    """
    raw = " ".join(str(text).strip().split())
    if not raw:
        return None
    if match := _SH_DAY.match(raw):
        word = match.group("word")
        if word:
            day = 1 if word in ("当天", "今天") else 2
        else:
            n = match.group("n")
            day = int(n) if n.isdigit() else _CN_NUM[n]
        return {"kind": "day_at", "day": day, "at": _hhmm_of(match.group("time")).strftime("%H:%M")}
    if match := _SH_DAILY.match(raw):
        return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")))}
    if match := _SH_WORKDAYS.match(raw):
        return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")), dow="1-5")}
    if match := _SH_WEEKEND.match(raw):
        return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")), dow="0,6")}
    if match := _SH_WEEKLY.match(raw):
        days = sorted({_WEEKDAY_DIGITS[c] for c in match.group("days") if c in _WEEKDAY_DIGITS})
        if days:
            dow = ",".join(str(d) for d in days)
            return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")), dow=dow)}
    if match := _SH_WEEKLY_EN.match(raw):
        names = re.split(r"\s*,\s*", match.group("days").lower())
        days = sorted({_EN_DAYS[n[:3]] for n in names})
        dow = ",".join(str(d) for d in days)
        return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")), dow=dow)}
    if match := _SH_MONTHLY.match(raw):
        dom = "last" if match.group("last") else str(int(match.group("dom")))
        return {"kind": "cron", "cron": _cron_at(_hhmm_of(match.group("time")), day=dom)}
    if match := _SH_DATETIME.match(raw):
        on = date.fromisoformat(
            "-".join(
                f"{int(p):02d}" if i else p for i, p in enumerate(match.group("date").split("-"))
            )
        )
        clock = _hhmm_of(match.group("time"))
        return {"kind": "at", "at": datetime.combine(on, clock).strftime("%Y-%m-%dT%H:%M")}
    if match := _SH_CLOCK.match(raw):
        return {"kind": "day_at", "day": 1, "at": _hhmm_of(match.group("time")).strftime("%H:%M")}
    try:
        delta = parse_duration(raw)
    except ValueError:
        return None
    return {"kind": "offset", "offset": format_duration(delta)}


def parse_timing(value: object) -> dict[str, object]:
    """Accept the compact strings operators type as well as the dict form.

    ``"+3h"`` / ``"3h"`` → offset; ``"day 2 20:00"`` → day_at;
    ``"at 2027-03-05 10:00"`` → at; ``"cron 0 11 * * *"`` → cron; and the
    shorthand of :func:`parse_shorthand` (``3小时``, ``第2天 20:00``, ``每天 11:00``).
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
    match = _DAY_AT_TEXT.match(text)
    if match:
        return {"kind": "day_at", "day": int(match.group(1)), "at": match.group(2)}
    shorthand = parse_shorthand(text)
    if shorthand is not None and shorthand["kind"] != "offset":
        return shorthand  # an offset is normalised by its own validator
    if lower.startswith("at "):
        return {"kind": "at", "at": text[3:].strip()}
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
    times = wall_times(timing.cron)
    found: set[datetime] = set()
    last_day: date | None = None
    for day in matching_days(timing.cron, wall_low.date(), wall_high.date()):
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
