"""Delivery statistics: how each SOP template and each of its touchpoints
performed — counts by status and reason, send rate, lateness percentiles, a time
series, breakdowns per channel instance and staff account, and exits.

Every figure is the sum of two disjoint parts:

* **settled** deliveries — finished, final, and already added to the rollup
  tables by ``scheduler.analytics.retention.roll_up`` (which also keeps them available after
  retention has archived the rows) — read from the rollups;
* **live** deliveries — the rest — aggregated from ``deliveries``. With the
  watermark ``(settled_max_id M, settled_before W)`` and the held-back ids H they
  are ``id > M``, ``id <= M AND due_at >= W`` and ``id IN H``, three index-driven
  reads whose size is the recent and pending part of the log, not its history.

Each part is read once: the live rows in one statement (one materialized CTE,
every breakdown a GROUP BY of it, joined by UNION ALL), the rollups in three
(per status and reason with their histograms, per hour, per account).

Lateness (``sent_at - due_at`` of sent deliveries) is counted in whole
milliseconds into buckets (``lateness_bucket``: 0.1 s wide below 10 s, 1 s below
10 min, 1 min below a day, 1 h beyond), so settled and live parts merge exactly;
percentiles are nearest-rank over the buckets and report a bucket's lower bound.
The mean and maximum are exact.

Time: the series is bucketed by due time, by UTC hour, shown in the workspace
zone. On settled deliveries a due range applies by whole hours (per-account
figures: whole days in the workspace zone), rounded outwards.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    String,
    Text,
    case,
    cast,
    extract,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlmodel import Session

from audiences.models import Account, Contact, GroupChat
from scheduler.analytics.log import unindexed
from scheduler.analytics.models import (
    DeliveryAccountRollup,
    DeliveryDailyRollup,
    DeliveryRollupHold,
    DeliveryRollupState,
)
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint

D = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
ROLLUPS = DeliveryDailyRollup.__table__  # type: ignore[attr-defined]
ACCOUNT_ROLLUPS = DeliveryAccountRollup.__table__  # type: ignore[attr-defined]
HOLDS = DeliveryRollupHold.__table__  # type: ignore[attr-defined]
STATE = DeliveryRollupState.__table__  # type: ignore[attr-defined]
CONTACTS = Contact.__table__  # type: ignore[attr-defined]
GROUPS = GroupChat.__table__  # type: ignore[attr-defined]

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


# -- the watermark --------------------------------------------------------------------


@dataclass(frozen=True)
class Watermark:
    """What the rollups cover: ``id <= max_id AND due_at < before`` minus the
    held-back ids. ``before`` is None until the first roll-up: all is live."""

    max_id: int = 0
    before: datetime | None = None

    def live_parts(self, sqlite: bool) -> list[tuple[list[Any], bool]]:
        """Three disjoint sets of predicates whose union is the live part, each
        with whether it is read by id (rows added since the roll-up, held rows)
        rather than by due time."""
        if self.before is None:
            return [([], False)]
        return [
            ([D.c.id > self.max_id], True),
            ([unindexed(D.c.id, sqlite) <= self.max_id, D.c.due_at >= self.before], False),
            (
                [
                    D.c.id.in_(select(HOLDS.c.delivery_id)),
                    unindexed(D.c.id, sqlite) <= self.max_id,
                    unindexed(D.c.due_at, sqlite) < self.before,
                ],
                True,
            ),
        ]


def read_watermark(conn: Connection | Session) -> Watermark:
    row = conn.execute(
        select(STATE.c.settled_max_id, STATE.c.settled_before).where(STATE.c.id == 1)
    ).first()
    return Watermark() if row is None else Watermark(int(row[0]), row[1])


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
class _LatenessSum:
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
        where = [unindexed(D.c.template_id, sqlite and by_id) == self.template_id]
        if self.version_id is not None:
            where.append(D.c.version_id == self.version_id)
        if self.touchpoint_id is not None:
            where.append(D.c.touchpoint_id == self.touchpoint_id)
        if self.channel is not None:
            where.append(D.c.channel == self.channel)
        if self.due_from is not None:
            where.append(D.c.due_at >= self.due_from)
        if self.due_to is not None:
            where.append(D.c.due_at < self.due_to)
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


# -- reading ----------------------------------------------------------------------------


_LIVE_COLUMNS = (
    D.c.id,
    D.c.template_id,
    D.c.version_id,
    D.c.touchpoint_id,
    D.c.channel,
    D.c.status,
    D.c.reason,
    D.c.due_at,
    D.c.sent_at,
    D.c.target_kind,
    D.c.target_id,
)


def sent_lateness_ms(dialect: str) -> Any:
    """``lateness_ms`` of a sent delivery, NULL for any other."""
    return case((D.c.status == S.SENT, lateness_ms(D.c.sent_at, D.c.due_at, dialect)))


def _live_rows(mark: Watermark, dialect: str, conditions: Callable[[bool], list[Any]]) -> Any:
    """The live deliveries matching ``conditions(by_id)``, with their lateness,
    as a materialized CTE: computed once per statement, not once per reference
    (SQLite would otherwise inline the lateness expression everywhere)."""
    late = sent_lateness_ms(dialect).label("late_ms")
    parts = [
        select(*_LIVE_COLUMNS, late).where(*conditions(by_id), *extra)
        for extra, by_id in mark.live_parts(dialect == "sqlite")
    ]
    rows = parts[0] if len(parts) == 1 else union_all(*parts)
    return rows.cte("live").prefix_with("MATERIALIZED")


class _Fact(NamedTuple):
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
class _Part:
    """One part of the deliveries (live or settled) counted by every breakdown
    the statistics show; ``template_stats`` adds the parts up."""

    facts: list[_Fact] = field(default_factory=list)
    histograms: dict[int, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    hours: dict[int, dict[str, int]] = field(default_factory=dict)  # hour number -> status -> n
    # (account, status, deliveries, of which due)
    accounts: list[tuple[int | None, str, int, int]] = field(default_factory=list)


# The columns of the live read. Each of its UNION ALL arms fills the ones it groups
# by and leaves the rest NULL, typed, so PostgreSQL can match the arms up.
_LIVE_SHAPE: dict[str, Any] = {
    "version_id": BigInteger,
    "touchpoint_id": BigInteger,
    "channel": String,
    "status": String,
    "reason": String,
    "late_bucket": BigInteger,
    "hour": BigInteger,
    "account_id": BigInteger,
    "deliveries": BigInteger,
    "due": BigInteger,
    "late_count": BigInteger,
    "late_sum_ms": BigInteger,
    "late_max_ms": BigInteger,
}


def _arm(part: str, **columns: Any) -> Select[Any]:
    """A SELECT in the shape of ``_LIVE_SHAPE``, tagged ``part``."""
    return select(
        literal(part, String).label("part"),
        *(
            (columns[name] if name in columns else cast(null(), type_)).label(name)
            for name, type_ in _LIVE_SHAPE.items()
        ),
    )


def _read_live(session: Session, live: Any, dialect: str, target_kind: str, now: datetime) -> _Part:
    """The live part in one statement: three GROUP BYs of the live CTE joined by
    UNION ALL, so the CTE (the read of ``deliveries``) is computed once, not once
    per breakdown. The facts are split by lateness bucket as well, which gives the
    histograms with them (only sent rows have a bucket; every figure of a fact is
    a sum or a maximum, so the split adds up to the same tallies)."""
    late, status = live.c.late_ms, live.c.status
    bucket = lateness_bucket_sql(late)
    hour = hour_number(live.c.due_at, dialect)
    targets, account = account_of(target_kind)
    due = func.sum(case((live.c.due_at <= now, 1), else_=0))
    keys = (live.c.version_id, live.c.touchpoint_id, live.c.channel, status, live.c.reason)
    facts = _arm(
        "fact",
        **{key.name: key for key in keys},
        late_bucket=bucket,
        deliveries=func.count(),
        due=due,
        late_count=func.count(late),
        late_sum_ms=func.sum(late),
        late_max_ms=func.max(late),
    ).group_by(*keys, bucket)
    hours = _arm("hour", hour=hour, status=status, deliveries=func.count()).group_by(hour, status)
    # Each live row's account by a lookup of its target's primary key. A join
    # lets PostgreSQL hash the whole contacts table instead (all 200,000 of
    # them, for a few thousand live rows): a cost that grows with the audience.
    owner = (
        select(account)
        .where(targets.c.id == live.c.target_id, live.c.target_kind == target_kind)
        .scalar_subquery()
    )
    owned = select(owner.label("account_id"), status, live.c.due_at).subquery("owned")
    accounts = (
        _arm(
            "account",
            account_id=owned.c.account_id,
            status=owned.c.status,
            deliveries=func.count(),
            due=func.sum(case((owned.c.due_at <= now, 1), else_=0)),
        )
        .select_from(owned)
        .group_by(owned.c.account_id, owned.c.status)
    )
    out = _Part()
    for row in session.execute(union_all(facts, hours, accounts)).all():
        if row.part == "fact":
            fact = _Fact(
                row.version_id,
                row.touchpoint_id,
                row.channel,
                row.status,
                row.reason,
                int(row.deliveries),
                int(row.due),
                int(row.late_count),
                int(row.late_sum_ms or 0),
                None if row.late_max_ms is None else int(row.late_max_ms),
            )
            out.facts.append(fact)
            if row.late_bucket is not None:
                out.histograms[fact.touchpoint_id][int(row.late_bucket)] += fact.late_count
        elif row.part == "hour":
            out.hours.setdefault(int(row.hour), {})[row.status] = int(row.deliveries)
        else:
            out.accounts.append((row.account_id, row.status, int(row.deliveries), int(row.due)))
    return out


def _read_settled(session: Session, flt: StatsFilter, zone: tzinfo) -> _Part:
    """The settled part, from the rollups (settled deliveries are all due:
    ``due_at < settled_before <= now``)."""
    out = _Part()
    r = ROLLUPS.c
    total = func.sum(r.deliveries)
    keys = (r.version_id, r.touchpoint_id, r.channel, r.status, r.reason)
    # Each group's lateness histograms come along as their JSON texts joined by
    # commas, added up in Python: SQL would have to sort every (bucket, count)
    # pair of thousands of small objects to group them, several times slower.
    sent = case((r.late_count > 0, cast(r.late_histogram, Text)))
    where = flt.rollup_conditions(ROLLUPS, zone)
    for v, tp, ch, st, rs, n, late_n, late_sum, late_max, histograms in session.execute(
        select(
            *keys,
            total,
            func.sum(r.late_count),
            func.sum(r.late_sum_ms),
            func.max(r.late_max_ms),
            func.aggregate_strings(sent, ","),
        )
        .where(*where)
        .group_by(*keys)
    ).all():
        out.facts.append(
            _Fact(
                v,
                tp,
                ch,
                st,
                rs,
                int(n),
                int(n),
                int(late_n),
                int(late_sum),
                None if late_max is None else int(late_max),
            )
        )
        if histograms:
            add_histograms(out.histograms[tp], histograms)
    # Per hour, a column per status: grouped in the order of the (template_id,
    # hour_start) index, so without a sort. Rollups hold terminal statuses only.
    per_status = [func.sum(case((r.status == status, r.deliveries))) for status in S.TERMINAL]
    for start, *counts in session.execute(
        select(r.hour_start, *per_status).where(*where).group_by(r.hour_start)
    ):
        out.hours[int(start.timestamp()) // 3600] = {
            s: int(n) for s, n in zip(S.TERMINAL, counts, strict=True) if n
        }
    a = ACCOUNT_ROLLUPS.c
    out.accounts = [
        (account_id, status, int(n), int(n))
        for account_id, status, n in session.execute(
            select(a.account_id, a.status, func.sum(a.deliveries))
            .where(*flt.rollup_conditions(ACCOUNT_ROLLUPS, zone))
            .group_by(a.account_id, a.status)
        ).all()
    ]
    return out


_NOT_IN_PAIRS = str.maketrans("", "", '{}" \t\r\n')


def add_histograms(into: Counter[int], texts: str) -> None:
    """Add lateness histograms, flat JSON objects ``{"<bucket ms>": count, ...}``
    given as their texts joined by commas, to ``into``. Read as ``bucket:count``
    pairs, identical pairs counted first (in C, by ``Counter``): the histograms of
    one touchpoint share most of their pairs, so few are left to convert."""
    for pair, times in Counter(texts.translate(_NOT_IN_PAIRS).split(",")).items():
        bucket, colon, count = pair.partition(":")
        if colon:  # not an empty histogram ("{}") or JSON null
            into[int(bucket)] += int(count) * times


@dataclass
class _Tally:
    counts: Counts = field(default_factory=Counts)
    lateness: _LatenessSum = field(default_factory=_LatenessSum)
    reasons: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    version_id: int | None = None

    def add(self, fact: _Fact) -> None:
        self.counts.add(fact.status, fact.deliveries, fact.due)
        self.version_id = fact.version_id
        if fact.late_count:
            self.lateness.add(fact.late_count, fact.late_sum_ms, fact.late_max_ms)
        if fact.status in S.TERMINAL and fact.status != S.SENT:
            self.reasons[(fact.status, fact.reason)] += fact.deliveries

    def reason_list(self) -> list[ReasonCount]:
        ranked = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or ""))
        return [ReasonCount(status, reason, n) for (status, reason), n in ranked]


def template_stats(
    session: Session, flt: StatsFilter, *, now: datetime, zone: tzinfo
) -> TemplateStats:
    """Statistics of one template (all its versions unless filtered); ``zone`` is
    the workspace zone the series is shown in."""
    template = templates_service.get_template(session, flt.template_id)
    dialect = session.get_bind().dialect.name
    mark = read_watermark(session)
    sqlite = dialect == "sqlite"
    live = _live_rows(mark, dialect, lambda by_id: flt.delivery_conditions(sqlite, by_id=by_id))
    parts = [_read_live(session, live, dialect, template.target_kind, now)]
    if mark.before is not None:
        parts.append(_read_settled(session, flt, zone))

    total = _Tally()
    per_touchpoint: dict[int, _Tally] = defaultdict(_Tally)
    per_channel: dict[str, _Tally] = defaultdict(_Tally)
    for part in parts:
        for fact in part.facts:
            for tally in (total, per_touchpoint[fact.touchpoint_id], per_channel[fact.channel]):
                tally.add(fact)
        for tp_id, histogram in part.histograms.items():
            total.lateness.histogram.update(histogram)
            per_touchpoint[tp_id].lateness.histogram.update(histogram)

    touchpoints = _touchpoints(session, flt, per_touchpoint)
    enrolled, active = _enrollments(session, flt)
    series, interval = _series([p.hours for p in parts], flt.interval, zone)
    return TemplateStats(
        template_id=flt.template_id,
        template_name=template.name,
        target_kind=template.target_kind,
        status=template.status,
        enrolled=enrolled,
        active=active,
        totals=total.counts,
        lateness=total.lateness.result(),
        reasons=total.reason_list(),
        touchpoints=touchpoints,
        channels=[ChannelStats(name, t.counts) for name, t in sorted(per_channel.items())],
        accounts=_accounts(session, [p.accounts for p in parts]),
        interval=interval,
        zone=str(zone),
        series=series,
        exits=_exits(session, flt, {t.touchpoint_id: t.name for t in touchpoints}),
        settled_before=mark.before,
    )


def _touchpoints(
    session: Session, flt: StatsFilter, tallies: Mapping[int, _Tally]
) -> list[TouchpointStats]:
    """The template's touchpoints in funnel order (version, position), including
    the ones nothing has been planned for yet."""
    tp, v = Touchpoint.__table__.c, TemplateVersion.__table__.c  # type: ignore[attr-defined]
    stmt = (
        select(tp.id, tp.version_id, v.version, tp.position, tp.name)
        .join_from(Touchpoint.__table__, TemplateVersion.__table__, v.id == tp.version_id)  # type: ignore[attr-defined]
        .where(tp.template_id == flt.template_id)
    )
    if flt.version_id is not None:
        stmt = stmt.where(tp.version_id == flt.version_id)
    if flt.touchpoint_id is not None:
        stmt = stmt.where(tp.id == flt.touchpoint_id)
    known = {row.id: row for row in session.execute(stmt).all()}
    out = []
    for tp_id in known.keys() | tallies.keys():
        row = known.get(tp_id)
        tally = tallies.get(tp_id) or _Tally()
        out.append(
            TouchpointStats(
                touchpoint_id=tp_id,
                version_id=row.version_id if row else tally.version_id,  # type: ignore[arg-type]
                version=row.version if row else None,
                position=row.position if row else None,
                name=row.name if row else None,
                counts=tally.counts,
                lateness=tally.lateness.result(),
                reasons=tally.reason_list(),
            )
        )
    return sorted(
        out,
        key=lambda t: (
            t.version or 0,
            t.position if t.position is not None else 1 << 30,
            t.touchpoint_id,
        ),
    )


def _versions(flt: StatsFilter) -> Any:
    """The template's version ids (enrollments are indexed by version and status)."""
    if flt.version_id is not None:
        return [flt.version_id]
    v = TemplateVersion.__table__.c  # type: ignore[attr-defined]
    return select(v.id).where(v.template_id == flt.template_id)


def _enrollments(session: Session, flt: StatsFilter) -> tuple[int, int]:
    e = ENROLLMENTS.c
    enrolled, active = session.execute(
        select(
            func.count(), func.sum(case((e.status == EnrollmentStatus.ACTIVE, 1), else_=0))
        ).where(e.version_id.in_(_versions(flt)))
    ).one()
    return int(enrolled), int(active or 0)


def _series(
    parts: Iterable[Mapping[int, Mapping[str, int]]], interval: str, zone: tzinfo
) -> tuple[list[SeriesPoint], str]:
    """The series from deliveries per hour number and status, per hour or per
    local day (``auto``: hours up to ``AUTO_HOURS_UP_TO``, days beyond)."""
    parts = [p for p in parts if p]
    if not parts:
        return [], "hour" if interval == "auto" else interval
    first, last = min(min(p) for p in parts), max(max(p) for p in parts)
    if interval == "auto":
        interval = "hour" if (last - first) * 3600 <= AUTO_HOURS_UP_TO.total_seconds() else "day"
    if interval == "hour" and last - first + 1 > MAX_SERIES_POINTS:
        raise InvalidStatsQuery(
            "interval",
            f"{last - first + 1} hourly points are too many (at most {MAX_SERIES_POINTS}); "
            "use interval=day or narrow due_from/due_to",
        )
    per: dict[Any, dict[str, int]] = defaultdict(dict)
    days: dict[int, date] = {}  # hour number -> its local day, worked out once per hour
    for part in parts:
        for number, by_status in part.items():
            if interval == "hour":
                key: Any = number
            else:
                key = days.get(number)
                if key is None:
                    key = days[number] = hour_start(number).astimezone(zone).date()
            counts = per[key]
            for status, n in by_status.items():
                counts[status] = counts.get(status, 0) + n
    if interval == "hour":
        return [
            _point(hour_start(n).astimezone(zone), per.get(n)) for n in range(first, last + 1)
        ], interval
    points, day, end = [], min(per), max(per)
    while day <= end:
        points.append(_point(datetime.combine(day, time(), zone), per.get(day)))
        day += timedelta(days=1)
    return points, interval


def _point(start: datetime, counts: Mapping[str, int] | None) -> SeriesPoint:
    counts = counts or {}
    return SeriesPoint(
        start=start,
        deliveries=sum(counts.values()),
        sent=counts.get(S.SENT, 0),
        failed=counts.get(S.FAILED, 0),
        skipped=counts.get(S.SKIPPED, 0),
        cancelled=counts.get(S.CANCELLED, 0),
        missed=counts.get(S.MISSED, 0),
        unknown=counts.get(S.UNKNOWN, 0),
        pending=sum(counts.get(s, 0) for s in S.PENDING),
    )


def account_of(target_kind: str) -> tuple[Any, Any]:
    """The table of a target kind and its column naming the owning staff account."""
    if target_kind == "group":
        return GROUPS, GROUPS.c.owner_account_id
    return CONTACTS, CONTACTS.c.account_id


def _accounts(
    session: Session, parts: Iterable[Iterable[tuple[int | None, str, int, int]]]
) -> list[AccountStats]:
    """Counts per owning staff account from ``(account, status, deliveries, due)``."""
    counts: dict[int | None, Counts] = defaultdict(Counts)
    for rows in parts:
        for account_id, status, n, due in rows:
            counts[account_id].add(status, n, due)
    accounts = Account.__table__.c  # type: ignore[attr-defined]
    ids = [a for a in counts if a is not None]
    names = (
        dict(session.execute(select(accounts.id, accounts.name).where(accounts.id.in_(ids))).all())
        if ids
        else {}
    )
    return sorted(
        (AccountStats(a, names.get(a), c) for a, c in counts.items()),
        key=lambda s: (-s.counts.deliveries, s.account_id or 0),
    )


def _exits(session: Session, flt: StatsFilter, names: Mapping[int, str | None]) -> list[ExitCount]:
    """Enrollments that ended before completing, by status and reason, with the
    last touchpoint sent before the exit (how many converted after which one)."""
    e = ENROLLMENTS.c
    after = (
        select(D.c.touchpoint_id)
        .where(D.c.enrollment_id == e.id, D.c.status == S.SENT, D.c.sent_at <= e.exited_at)
        .order_by(D.c.sent_at.desc(), D.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    ended = (EnrollmentStatus.EXITED, EnrollmentStatus.CANCELLED, EnrollmentStatus.COMPLETED)
    where = [e.version_id.in_(_versions(flt)), e.status.in_(ended), e.exited_at.is_not(None)]
    if flt.due_from is not None:
        where.append(e.exited_at >= flt.due_from)
    if flt.due_to is not None:
        where.append(e.exited_at < flt.due_to)
    exits = select(e.status, e.exit_reason, after.label("after_tp")).where(*where).subquery()
    rows = session.execute(
        select(exits.c.status, exits.c.exit_reason, exits.c.after_tp, func.count()).group_by(
            exits.c.status, exits.c.exit_reason, exits.c.after_tp
        )
    ).all()
    return sorted(
        (
            ExitCount(st, rs, tp, names.get(tp) if tp is not None else None, int(n))
            for st, rs, tp, n in rows
        ),
        key=lambda x: (-x.count, x.status, x.reason or ""),
    )


def overview(session: Session, *, now: datetime) -> list[TemplateSummary]:
    """Every template with its delivery counts, live plus settled."""
    mark = read_watermark(session)
    live = _live_rows(mark, session.get_bind().dialect.name, lambda by_id: [])
    counts: dict[int, Counts] = defaultdict(Counts)
    for template_id, status, n, due in session.execute(
        select(
            live.c.template_id,
            live.c.status,
            func.count(),
            func.sum(case((live.c.due_at <= now, 1), else_=0)),
        ).group_by(live.c.template_id, live.c.status)
    ).all():
        counts[template_id].add(status, int(n), int(due or 0))
    if mark.before is not None:
        r = ROLLUPS.c
        for template_id, status, n in session.execute(
            select(r.template_id, r.status, func.sum(r.deliveries)).group_by(
                r.template_id, r.status
            )
        ).all():
            counts[template_id].add(status, int(n), int(n))
    t = SopTemplate.__table__.c  # type: ignore[attr-defined]
    return [
        TemplateSummary(template_id, name, kind, status, counts.get(template_id) or Counts())
        for template_id, name, kind, status in session.execute(
            select(t.id, t.name, t.target_kind, t.status).order_by(t.id)
        ).all()
    ]
