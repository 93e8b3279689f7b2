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
gives with ``fold=0``; we rely on it deliberately.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sopbot.ids import is_id

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


def get_zone(name: str) -> ZoneInfo:
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name like Asia/Shanghai"
        ) from exc


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    if not name or "/" not in name and name not in {"UTC"}:
        raise ValueError(name)
    return ZoneInfo(name)


def parse_hhmm(text: str) -> time:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(text).strip())
    if not match:
        raise ValueError(f"time {text!r} is not HH:MM (00:00–23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def local_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in ``zone`` → the UTC instant, with the DST rules above."""
    aware = local.replace(tzinfo=zone, fold=0)
    return aware.astimezone(UTC)


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
        if value > 3660:
            raise ValueError(f"day {value} is more than ten years away")
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
        try:
            _cron_trigger(value, ZoneInfo("UTC"))
        except ValueError as exc:
            raise ValueError(f"cron {value!r} is not valid: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _ordered(self) -> CronTiming:
        if self.start and self.end and self.end <= self.start:
            raise ValueError("cron end must be after its start")
        return self

    def trigger(self, zone: ZoneInfo) -> CronTrigger:
        return _cron_trigger(self.cron, zone, self.start, self.end)

    def describe(self) -> str:
        return f"cron {self.cron}"


def _as_local(value: datetime, zone: ZoneInfo) -> datetime:
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


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


def _cron_trigger(
    expr: str, zone: ZoneInfo, start: datetime | None = None, end: datetime | None = None
) -> CronTrigger:
    minute, hour, day, month, dow = expr.split(" ")
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_dow(dow),
        timezone=zone,
        start_date=_as_local(start, zone) if start else None,
        end_date=_as_local(end, zone) if end else None,
    )


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
    if isinstance(timing, OffsetTiming):
        return anchor_at + timing.delta
    if isinstance(timing, DayAtTiming):
        local_date = anchor_at.astimezone(zone).date()
        return _day_at(local_date, timing.day, timing.at, zone)
    if isinstance(timing, AtTiming):
        value = timing.at
        return value.astimezone(UTC) if value.tzinfo else local_to_utc(value, zone)
    raise TypeError(f"{timing!r} has no single due time")


@lru_cache(maxsize=65536)
def _day_at(local_date: date, day: int, at: str, zone: ZoneInfo) -> datetime:
    target = local_date + timedelta(days=day - 1)
    return local_to_utc(datetime.combine(target, parse_hhmm(at)), zone)


def cron_occurrences(
    timing: CronTiming, zone: ZoneInfo, after: datetime, until: datetime, limit: int = 100_000
) -> list[datetime]:
    """Cron fire times in (after, until], as UTC instants, computed by APScheduler's
    own ``CronTrigger`` (DST-correct in the template zone)."""
    trigger = timing.trigger(zone)
    out: list[datetime] = []
    previous: datetime | None = None
    cursor = after + timedelta(microseconds=1)
    while len(out) < limit:
        fire = trigger.get_next_fire_time(previous, cursor)
        if fire is None or fire > until:
            break
        fire_utc = fire.astimezone(UTC)
        if fire_utc > after:
            out.append(fire_utc)
        previous = fire
        cursor = fire + timedelta(seconds=1)
    return out
