"""The send calendar: every upcoming send across live SOPs in a window, read-only.

Three sources, never counted twice:

* planned deliveries (``scheduled`` rows), by touchpoint and due time;
* cron occurrences not planned yet (the planner fans them out only shortly
  before they fall due): computed for display from each live version's cron
  touchpoints, counting the version's active enrollments, which is whom the
  planner would fan the occurrence out to;
* a fixed start's touchpoints whose rows the planner writes shortly before
  they fall due (``scheduler.flows.fan_out``): counting the enrollments from
  that start.

Nothing here writes; the planner stays the only one that creates deliveries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.timing import CronTiming, cron_occurrences, get_zone

MAX_OCCURRENCES = 500  # per cron touchpoint and window (a minutely cron in a month view)


@dataclass
class CalendarSend:
    at: datetime  # UTC: when the touchpoint falls due
    template_id: int
    template_name: str
    touchpoint_id: int
    touchpoint_name: str
    version_id: int
    target_kind: str
    count: int  # recipients
    planned: bool  # deliveries exist; False: computed from the cron and the enrollments
    timing: dict[str, Any]
    anchor: str = "join"


def upcoming(
    session: Session,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    template_id: int | None = None,
    occurrences_per_touchpoint: int = MAX_OCCURRENCES,
) -> list[CalendarSend]:
    """Sends due in ``[max(start, now), end)`` of live templates, earliest first."""
    low = max(start, now)
    if end <= low:
        return []
    live = select(SopTemplate).where(col(SopTemplate.status).in_(TemplateStatus.LIVE))
    if template_id is not None:
        live = live.where(SopTemplate.id == template_id)
    templates = {t.id: t for t in session.exec(live).all()}
    if not templates:
        return []
    out: list[CalendarSend] = []
    touchpoints: dict[int, Touchpoint] = {}
    versions: dict[int, TemplateVersion] = {}

    d = Delivery.__table__.c  # type: ignore[attr-defined]
    keys = (d.touchpoint_id, d.due_at, d.template_id, d.version_id, d.target_kind)
    planned_rows = session.execute(
        sa_select(*keys, func.count())
        .where(
            d.status == DeliveryStatus.SCHEDULED,
            d.template_id.in_(list(templates)),
            d.due_at >= low,
            d.due_at < end,
        )
        .group_by(*keys)
    ).all()
    planned_keys: set[tuple[int, datetime]] = set()
    for tp_id, due, tpl_id, version_id, kind, count in planned_rows:
        tp = touchpoints.get(tp_id) or session.get(Touchpoint, tp_id)
        if tp is None:
            continue
        touchpoints[tp_id] = tp
        version = versions.get(version_id) or session.get(TemplateVersion, version_id)
        if version is not None:
            versions[version_id] = version
        planned_keys.add((tp_id, due))
        out.append(
            CalendarSend(
                at=due,
                template_id=tpl_id,
                template_name=templates[tpl_id].name,
                touchpoint_id=tp_id,
                touchpoint_name=tp.name,
                version_id=version_id,
                target_kind=kind,
                count=int(count),
                planned=True,
                timing=tp.timing,
                anchor=(version.spec.get("anchor") if version else None) or "join",
            )
        )

    # cron occurrences the planner has not fanned out yet
    # (only versions with a cron touchpoint: counting every SOP's enrollments
    # would scan a large one's for nothing)
    t = Touchpoint.__table__.c  # type: ignore[attr-defined]
    with_cron = list(
        session.execute(sa_select(t.version_id).where(t.timing_kind == "cron").distinct()).scalars()
    )
    e = Enrollment.__table__.c  # type: ignore[attr-defined]
    active = (
        session.execute(
            sa_select(e.version_id, e.target_kind, func.count())
            .where(
                e.version_id.in_(with_cron),
                e.status == EnrollmentStatus.ACTIVE,
                e.template_id.in_(list(templates)),
            )
            .group_by(e.version_id, e.target_kind)
        ).all()
        if with_cron
        else []
    )
    for version_id, kind, count in active:
        version = versions.get(version_id) or session.get(TemplateVersion, version_id)
        if version is None:
            continue
        zone = get_zone(version.spec.get("timezone") or "Asia/Shanghai")
        crons = session.exec(
            select(Touchpoint).where(
                Touchpoint.version_id == version_id, Touchpoint.timing_kind == "cron"
            )
        ).all()
        for tp in crons:
            timing = CronTiming.model_validate(tp.timing)
            for at in cron_occurrences(
                timing, zone, low - timedelta(microseconds=1), end, occurrences_per_touchpoint
            ):
                if at >= end or (tp.id, at) in planned_keys:
                    continue
                out.append(
                    CalendarSend(
                        at=at,
                        template_id=version.template_id,
                        template_name=templates[version.template_id].name,
                        touchpoint_id=tp.id,  # type: ignore[arg-type]
                        touchpoint_name=tp.name,
                        version_id=version_id,
                        target_kind=kind,
                        count=int(count),
                        planned=False,
                        timing=tp.timing,
                        anchor=version.spec.get("anchor") or "join",
                    )
                )
    waiting = _fan_outs(session, templates, low, end)
    written = {(s.touchpoint_id, s.at) for s in waiting} & planned_keys  # counted in them
    out = [s for s in out if (s.touchpoint_id, s.at) not in written] + waiting
    out.sort(key=lambda s: (s.at, s.template_name, s.touchpoint_name))
    return out


def _fan_outs(
    session: Session,
    templates: dict[Any, SopTemplate],
    low: datetime,
    end: datetime,
) -> list[CalendarSend]:
    """A fixed start's touchpoints whose rows the planner writes shortly before
    they fall due (``scheduler.flows.fan_out``): one send for everyone enrolled
    from the start. Rows some of them already have (enrolled after the
    publish) are counted in it, not apart."""
    from scheduler.flows.fan_out import enrolled_from_start
    from sop_templates import service as templates_service

    pending = session.exec(
        select(Touchpoint).where(
            col(Touchpoint.fan_out_at).is_not(None),
            col(Touchpoint.fan_out_at) >= low,
            col(Touchpoint.fan_out_at) < end,
            col(Touchpoint.template_id).in_(list(templates)),
        )
    ).all()
    sends = []
    counts: dict[int, int] = {}  # version → enrolled from its start (one count for its touchpoints)
    for tp in pending:
        version = session.get(TemplateVersion, tp.version_id)
        if version is None or tp.fan_out_at is None:
            continue
        spec = templates_service.version_spec(version)
        if tp.version_id not in counts:
            counts[tp.version_id] = session.execute(
                sa_select(func.count()).where(*enrolled_from_start(version, spec))
            ).scalar_one()
        count = counts[tp.version_id]
        sends.append(
            CalendarSend(
                at=tp.fan_out_at,
                template_id=tp.template_id,
                template_name=templates[tp.template_id].name,
                touchpoint_id=tp.id,  # type: ignore[arg-type]
                touchpoint_name=tp.name,
                version_id=version.id,  # type: ignore[arg-type]
                target_kind=spec.target,
                count=int(count),
                planned=False,
                timing=tp.timing,
                anchor="fixed",
            )
        )
    return sends


def next_sends(
    session: Session, now: datetime, horizon: timedelta = timedelta(days=400)
) -> dict[int, CalendarSend]:
    """Each live template's next send (the earliest touchpoint, recipients of
    sends at that same instant added up), for the template list and dashboard."""
    first: dict[int, CalendarSend] = {}
    for send in upcoming(session, now, now + horizon, now, occurrences_per_touchpoint=1):
        current = first.get(send.template_id)
        if current is None:
            first[send.template_id] = CalendarSend(**{**send.__dict__})
        elif send.at == current.at and send.touchpoint_id == current.touchpoint_id:
            current.count += send.count
    return first


def by_day(sends: list[CalendarSend], zone: Any) -> dict[Any, list[CalendarSend]]:
    """Sends grouped by local calendar day (in ``zone``), days in order."""
    days: dict[Any, list[CalendarSend]] = defaultdict(list)
    for send in sends:
        days[send.at.astimezone(zone).date()].append(send)
    return dict(sorted(days.items()))


def recipients(
    session: Session, touchpoint_id: int, at: datetime, limit: int = 500
) -> list[tuple[str, int]]:
    """Who a send at ``at`` goes to: its planned deliveries, else (or while the
    planner has yet to write them all) the active enrollments of the
    touchpoint's version (``(target_kind, target_id)``)."""
    tp = session.get(Touchpoint, touchpoint_id)
    waiting = tp is not None and tp.fan_out_at == at
    rows = (
        []
        if waiting
        else session.exec(
            select(Delivery.target_kind, Delivery.target_id)
            .where(
                Delivery.touchpoint_id == touchpoint_id,
                Delivery.due_at == at,
                Delivery.status == DeliveryStatus.SCHEDULED,
            )
            .limit(limit)
        ).all()
    )
    if rows:
        return [(k, int(i)) for k, i in rows]
    if tp is None:
        return []
    enrolled = session.exec(
        select(Enrollment.target_kind, Enrollment.target_id)
        .where(
            Enrollment.version_id == tp.version_id,
            Enrollment.status == EnrollmentStatus.ACTIVE,
        )
        .limit(limit)
    ).all()
    return [(k, int(i)) for k, i in enrolled]
