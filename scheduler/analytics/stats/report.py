"""A template's statistics and the overview of every template: the live and
settled parts added up into totals, touchpoints in funnel order, channels,
staff accounts, the time series and exits."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    ColumnElement,
    case,
    func,
    select,
)
from sqlmodel import Session

from audiences.tables import ACCOUNTS
from scheduler.analytics.stats.figures import (
    AUTO_HOURS_UP_TO,
    MAX_SERIES_POINTS,
    AccountStats,
    ChannelStats,
    Counts,
    ExitCount,
    Fact,
    InvalidStatsQuery,
    LatenessSum,
    ReasonCount,
    SeriesPoint,
    StatsFilter,
    TemplateStats,
    TemplateSummary,
    TouchpointStats,
    hour_start,
)
from scheduler.analytics.stats.live import live_rows, read_live
from scheduler.analytics.stats.settled import ROLLUPS, read_settled, read_watermark
from scheduler.outbox.models import DeliveryStatus, EnrollmentStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint

S = DeliveryStatus


@dataclass
class _Tally:
    counts: Counts = field(default_factory=Counts)
    lateness: LatenessSum = field(default_factory=LatenessSum)
    reasons: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    version_id: int | None = None

    def add(self, fact: Fact) -> None:
        self.counts.add(fact.status, fact.deliveries, fact.due)
        self.version_id = fact.version_id
        if fact.late_count:
            self.lateness.add(fact.late_count, fact.late_sum_ms, fact.late_max_ms)
        if fact.status in S.TERMINAL and fact.status not in (S.SENT, S.DONE):
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
    live = live_rows(mark, dialect, lambda by_id: flt.delivery_conditions(sqlite, by_id=by_id))
    parts = [read_live(session, live, dialect, template.target_kind, now)]
    if mark.before is not None:
        parts.append(read_settled(session, flt, zone))

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
        done=counts.get(S.DONE, 0),
        skipped_by_staff=counts.get(S.SKIPPED_BY_STAFF, 0),
        pending=sum(counts.get(s, 0) for s in S.PENDING),
    )


def _accounts(
    session: Session, parts: Iterable[Iterable[tuple[int | None, str, int, int]]]
) -> list[AccountStats]:
    """Counts per owning staff account from ``(account, status, deliveries, due)``."""
    counts: dict[int | None, Counts] = defaultdict(Counts)
    for rows in parts:
        for account_id, status, n, due in rows:
            counts[account_id].add(status, n, due)
    accounts = ACCOUNTS.c
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
        select(DELIVERIES.c.touchpoint_id)
        .where(
            DELIVERIES.c.enrollment_id == e.id,
            DELIVERIES.c.status == S.SENT,
            DELIVERIES.c.sent_at <= e.exited_at,
        )
        .order_by(DELIVERIES.c.sent_at.desc(), DELIVERIES.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    ended = (EnrollmentStatus.EXITED, EnrollmentStatus.CANCELLED, EnrollmentStatus.COMPLETED)
    where: list[ColumnElement[bool]] = [
        e.version_id.in_(_versions(flt)),
        e.status.in_(ended),
        e.exited_at.is_not(None),
    ]
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


def overview(
    session: Session, *, now: datetime, counts: Mapping[int, Counts] | None = None
) -> list[TemplateSummary]:
    """Every template with its delivery counts, live plus settled (``counts``:
    already read by ``overview_counts``, e.g. a recent snapshot of them)."""
    if counts is None:
        counts = overview_counts(session, now=now)
    t = SopTemplate.__table__.c  # type: ignore[attr-defined]
    return [
        TemplateSummary(template_id, name, kind, status, counts.get(template_id) or Counts())
        for template_id, name, kind, status in session.execute(
            select(t.id, t.name, t.target_kind, t.status).order_by(t.id)
        ).all()
    ]


def overview_counts(session: Session, *, now: datetime) -> dict[int, Counts]:
    """Every template's delivery counts by id, live plus settled."""
    mark = read_watermark(session)
    counts: dict[int, Counts] = defaultdict(Counts)
    # Counts only: straight from ``deliveries`` per live part, without the
    # lateness the template statistics compute (the list stays cheap while a
    # burst is being sent).
    d = DELIVERIES.c
    sqlite = session.get_bind().dialect.name == "sqlite"
    for conditions, _ in mark.live_parts(sqlite):
        for template_id, status, n, due in session.execute(
            select(
                d.template_id, d.status, func.count(), func.sum(case((d.due_at <= now, 1), else_=0))
            )
            .where(*conditions)
            .group_by(d.template_id, d.status)
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
    return dict(counts)
