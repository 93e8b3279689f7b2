"""What the statistics report and how they are counted: the filter, the result
shapes, and the arithmetic both parts share (lateness in whole milliseconds and
its histogram buckets, hour numbers, nearest-rank percentiles)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    case,
    cast,
    extract,
    func,
)

from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES
from sopbot.sql import unindexed

S = DeliveryStatus
INTERVALS = ("auto", "hour", "day")
MAX_SERIES_POINTS = 24 * 62  # two months of hours
AUTO_HOURS_UP_TO = timedelta(days=7)


class InvalidStatsQuery(ValueError):
    """A statistics filter that cannot be used; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# -- SQL that differs between SQLite and PostgreSQL ---------------------------------


def _sqlite_epoch(instant: Any) -> ColumnElement[int]:
    # Whole seconds of the stored "YYYY-MM-DD HH:MM:SS.ffffff" text. Only the
    # first 19 characters: SQLite rounds a fraction to milliseconds, so
    # ".999999" would otherwise count as the next second.
    return cast(func.strftime("%s", func.substr(instant, 1, 19)), Integer)


def lateness_ms(sent_at: Any, due_at: Any, dialect: str) -> ColumnElement[int]:
    """``sent_at - due_at`` in whole milliseconds (floored, never negative), exact
    on both backends: on SQLite from the stored UTC text, seconds and
    microseconds apart."""
    if dialect == "sqlite":
        micros = (
            (_sqlite_epoch(sent_at) - _sqlite_epoch(due_at)) * 1_000_000
            + cast(func.substr(sent_at, 21, 6), Integer)
            - cast(func.substr(due_at, 21, 6), Integer)
        )
        return func.max(micros, 0) // 1000
    micros = cast(func.floor(extract("epoch", sent_at - due_at) * 1_000_000), BigInteger)
    return func.greatest(micros, 0) // 1000


def hour_number(instant: Any, dialect: str) -> ColumnElement[int]:
    """Hours since the Unix epoch (UTC) of an instant column."""
    if dialect == "sqlite":
        return _sqlite_epoch(instant) // 3600
    return cast(func.floor(extract("epoch", instant) / 3600), BigInteger)


_BUCKETS = ((10_000, 100), (600_000, 1000), (86_400_000, 60_000))
_LAST_STEP = 3_600_000


def lateness_bucket(ms: int) -> int:
    """The lower bound (ms) of the histogram bucket that holds ``ms``."""
    for limit, step in _BUCKETS:
        if ms < limit:
            return ms // step * step
    return ms // _LAST_STEP * _LAST_STEP


def lateness_bucket_sql(ms: Any) -> ColumnElement[int]:
    """``lateness_bucket`` in SQL."""
    return case(
        *((ms < limit, ms // step * step) for limit, step in _BUCKETS),
        else_=ms // _LAST_STEP * _LAST_STEP,
    )


def percentile(histogram: Mapping[int, int], pct: float) -> int | None:
    """Nearest-rank percentile over a bucket histogram: the lower bound of the
    bucket holding the ``ceil(pct% * n)``-th smallest value."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(pct / 100 * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket
    raise AssertionError("unreachable")


def hour_start(number: int) -> datetime:
    return datetime.fromtimestamp(number * 3600, UTC)


# -- results --------------------------------------------------------------------------


@dataclass
class Counts:
    """Deliveries by outcome. ``due``: those whose due time has come;
    ``send_rate`` = sent / due."""

    deliveries: int = 0
    due: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    missed: int = 0
    unknown: int = 0
    done: int = 0  # remind mode: the staff member sent it
    skipped_by_staff: int = 0
    send_rate: float | None = None

    def add(self, status: str, n: int, due: int) -> None:
        self.deliveries += n
        self.due += due
        if status in S.PENDING:
            self.pending += n
        elif status in S.TERMINAL:
            setattr(self, status, getattr(self, status) + n)
        self.send_rate = round(self.sent / self.due, 4) if self.due else None


@dataclass
class Lateness:
    """``sent_at - due_at`` of sent deliveries, in seconds (percentiles: the
    lower bound of their histogram bucket)."""

    count: int = 0
    mean_seconds: float | None = None
    max_seconds: float | None = None
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    p99_seconds: float | None = None


@dataclass
class LatenessSum:
    count: int = 0
    sum_ms: int = 0
    max_ms: int | None = None
    histogram: Counter[int] = field(default_factory=Counter)

    def add(self, count: int, sum_ms: int, max_ms: int | None) -> None:
        self.count += count
        self.sum_ms += sum_ms
        if max_ms is not None and (self.max_ms is None or max_ms > self.max_ms):
            self.max_ms = max_ms

    def result(self) -> Lateness:
        out = Lateness(count=self.count)
        if self.count:
            out.mean_seconds = round(self.sum_ms / self.count / 1000, 3)
        if self.max_ms is not None:
            out.max_seconds = self.max_ms / 1000
        for pct in (50, 95, 99):
            value = percentile(self.histogram, pct)
            setattr(out, f"p{pct}_seconds", None if value is None else value / 1000)
        return out


@dataclass
class ReasonCount:
    status: str
    reason: str | None
    count: int


@dataclass
class TouchpointStats:
    touchpoint_id: int
    version_id: int
    version: int | None
    position: int | None
    name: str | None
    counts: Counts
    lateness: Lateness
    reasons: list[ReasonCount]


@dataclass
class ChannelStats:
    channel: str
    counts: Counts


@dataclass
class AccountStats:
    account_id: int | None
    account_name: str | None
    counts: Counts


@dataclass
class SeriesPoint:
    start: datetime  # in the workspace zone
    deliveries: int
    sent: int
    failed: int
    skipped: int
    cancelled: int
    missed: int
    unknown: int
    done: int
    skipped_by_staff: int
    pending: int


@dataclass
class ExitCount:
    status: str
    reason: str | None
    after_touchpoint_id: int | None
    after_touchpoint_name: str | None
    count: int


@dataclass
class TemplateStats:
    template_id: int
    template_name: str
    target_kind: str
    status: str
    enrolled: int
    active: int
    totals: Counts
    lateness: Lateness
    reasons: list[ReasonCount]
    touchpoints: list[TouchpointStats]
    channels: list[ChannelStats]
    accounts: list[AccountStats]
    interval: str
    zone: str
    series: list[SeriesPoint]
    exits: list[ExitCount]
    settled_before: datetime | None


@dataclass
class TemplateSummary:
    template_id: int
    template_name: str
    target_kind: str
    status: str
    counts: Counts


# -- filters --------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsFilter:
    template_id: int
    version_id: int | None = None
    touchpoint_id: int | None = None
    channel: str | None = None
    due_from: datetime | None = None
    due_to: datetime | None = None
    interval: str = "auto"

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise InvalidStatsQuery(
                "interval", f"interval {self.interval!r} is not one of: {', '.join(INTERVALS)}"
            )
        if self.due_from is not None and self.due_to is not None and self.due_to <= self.due_from:
            raise InvalidStatsQuery(
                "due_to",
                f"due_to ({self.due_to.isoformat()}) must be after due_from "
                f"({self.due_from.isoformat()})",
            )

    def delivery_conditions(self, sqlite: bool, *, by_id: bool = False) -> list[Any]:
        where = [unindexed(DELIVERIES.c.template_id, sqlite and by_id) == self.template_id]
        if self.version_id is not None:
            where.append(DELIVERIES.c.version_id == self.version_id)
        if self.touchpoint_id is not None:
            where.append(DELIVERIES.c.touchpoint_id == self.touchpoint_id)
        if self.channel is not None:
            where.append(DELIVERIES.c.channel == self.channel)
        if self.due_from is not None:
            where.append(DELIVERIES.c.due_at >= self.due_from)
        if self.due_to is not None:
            where.append(DELIVERIES.c.due_at < self.due_to)
        return where

    def rollup_conditions(self, table: Any, zone: tzinfo) -> list[Any]:
        where = [table.c.template_id == self.template_id]
        for column, value in (
            (table.c.version_id, self.version_id),
            (table.c.touchpoint_id, self.touchpoint_id),
            (table.c.channel, self.channel),
        ):
            if value is not None:
                where.append(column == value)
        if "hour_start" in table.c:
            if self.due_from is not None:
                first_hour = self.due_from.astimezone(UTC).replace(
                    minute=0, second=0, microsecond=0
                )
                where.append(table.c.hour_start >= first_hour)
            if self.due_to is not None:
                where.append(table.c.hour_start < self.due_to)
        else:
            if self.due_from is not None:
                where.append(table.c.day >= self.due_from.astimezone(zone).date())
            if self.due_to is not None:
                last = (self.due_to - timedelta(microseconds=1)).astimezone(zone).date()
                where.append(table.c.day <= last)
        return where


class Fact(NamedTuple):
    version_id: int
    touchpoint_id: int
    channel: str
    status: str
    reason: str | None
    deliveries: int
    due: int
    late_count: int
    late_sum_ms: int
    late_max_ms: int | None


@dataclass
class Part:
    """One part of the deliveries (live or settled) counted by every breakdown
    the statistics show; ``template_stats`` adds the parts up."""

    facts: list[Fact] = field(default_factory=list)
    histograms: dict[int, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    hours: dict[int, dict[str, int]] = field(default_factory=dict)  # hour number -> status -> n
    # (account, status, deliveries, of which due)
    accounts: list[tuple[int | None, str, int, int]] = field(default_factory=list)
