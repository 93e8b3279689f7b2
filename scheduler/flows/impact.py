"""What publishing a template's draft would do, worked out without writing
anything: who is enrolled now, how many deliveries that writes, and what the
keep / move choice means for the contacts already enrolled. The publish
confirmation shows it; ``scheduler.flows.lifecycle.publish`` then does it.

Read-only by design: the same segment query as ``enrollment.enroll_segment``,
counted instead of inserted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import Session, col

from scheduler.flows import enrollment, fan_out
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from sop_templates.models import SopTemplate
from sop_templates.schemas import TemplateSpec


@dataclass
class PublishImpact:
    valid: bool = True
    enrolls_now: bool = False  # group / fixed-start SOPs take in their segment at publish
    enrolled: int = 0  # targets enrolled at publish
    excluded: int = 0  # in the segment but already in an SOP this one excludes (互斥)
    deliveries: int = 0  # one-off deliveries written for them at publish
    recurring: int = 0  # recurring touchpoints: fanned out at each occurrence instead
    active: int = 0  # targets enrolled on an earlier version, still running
    pending: int = 0  # their deliveries still waiting (what "move" re-points)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def publish_impact(session: Session, template: SopTemplate, now: datetime) -> PublishImpact:
    """The numbers ``lifecycle.publish`` would produce for the current draft."""
    try:
        spec = TemplateSpec.model_validate(template.draft)
    except ValidationError:
        return PublishImpact(valid=False)
    impact = PublishImpact()
    one_off = sum(1 for tp in spec.touchpoints if tp.timing.kind != "cron")
    impact.recurring = len(spec.touchpoints) - one_off
    if enrollment.enrolls_at_publish(spec):
        impact.enrolls_now = True
        pairs, excluded = enrollment.publish_targets(session, spec, template.id, now)  # type: ignore[arg-type]
        impact.enrolled, impact.excluded = len(pairs), len(excluded)
        impact.deliveries = impact.enrolled * one_off
    if template.current_version_id is not None:
        impact.active = session.execute(
            select(func.count())
            .select_from(Enrollment)
            .where(
                col(Enrollment.template_id) == template.id,
                col(Enrollment.status) == EnrollmentStatus.ACTIVE,
            )
        ).scalar_one()
        impact.pending = session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(
                col(Delivery.template_id) == template.id,
                col(Delivery.status) == DeliveryStatus.SCHEDULED,
            )
        ).scalar_one() + fan_out.waiting(session, template.id)  # type: ignore[arg-type]
    return impact


# -- overlapping SOPs -------------------------------------------------------------------

HOUR = 60  # touchpoints closer than this many minutes collide


@dataclass
class Overlap:
    template_id: int
    name: str
    shared: int  # targets in both segments now (new friends: accounts in common)
    touchpoints: list[tuple[str, str]]  # (this template's touchpoint, the other's) within the hour
    exclusive: bool = False  # one excludes the other (互斥): nobody gets both


def _moments(tp: Any) -> tuple[str, tuple[int, ...]] | None:
    """A touchpoint's place in time, comparable with another of the same kind:
    minutes after the anchor (offset), (day, minute of day) (day_at), or the
    minutes of the day it fires at (cron)."""
    timing = tp.timing
    if timing.kind == "offset":
        return "offset", (int(timing.delta.total_seconds() // 60),)
    if timing.kind == "day_at":
        hour, minute = (int(x) for x in timing.at.split(":"))
        return "day_at", (timing.day * 24 * 60 + hour * 60 + minute,)
    if timing.kind == "cron":
        from sop_templates.cron import wall_times

        return "cron", tuple(t.hour * 60 + t.minute for t in wall_times(timing.cron))
    return None


def _close(a: tuple[str, tuple[int, ...]] | None, b: tuple[str, tuple[int, ...]] | None) -> bool:
    if a is None or b is None or a[0] != b[0]:
        return False
    return any(abs(x - y) < HOUR for x in a[1] for y in b[1])


def overlaps(session: Session, template: SopTemplate, now: datetime) -> list[Overlap]:
    """Live SOPs with the same kind of segment whose audience overlaps this
    draft's and whose touchpoints fall within the same hour of this one's (a
    new friend welcomed three times in one minute). Read-only."""
    from audiences.segment_queries import segment_query
    from sop_templates import service as templates_service
    from sop_templates.models import TemplateStatus

    try:
        spec = TemplateSpec.model_validate(template.draft)
    except ValidationError:
        return []
    if spec.segment is None:
        return []
    mine = [(tp.name, _moments(tp)) for tp in spec.touchpoints]
    found: list[Overlap] = []
    for other in templates_service.list_templates(session):
        if other.id == template.id or other.status != TemplateStatus.PUBLISHED:
            continue
        if other.target_kind != template.target_kind or other.current_version_id is None:
            continue
        theirs = templates_service.version_spec(
            templates_service.get_version(session, other.current_version_id)
        )
        if theirs.segment is None or theirs.segment.kind != spec.segment.kind:
            continue
        pairs = [
            (name, tp.name)
            for name, moment in mine
            for tp in theirs.touchpoints
            if _close(moment, _moments(tp))
        ]
        if not pairs:
            continue
        if spec.segment.kind == "new_friends":
            a = set(getattr(spec.segment, "accounts", []) or [])
            b = set(getattr(theirs.segment, "accounts", []) or [])
            shared = len(a & b) if a and b else 1
        else:
            ours = segment_query(session, spec.target, spec.segment, now=now).subquery()
            other_q = segment_query(session, theirs.target, theirs.segment, now=now).subquery()
            shared = session.execute(
                select(func.count()).select_from(ours).where(ours.c[0].in_(select(other_q.c[0])))
            ).scalar_one()
        if shared:
            exclusive = other.id in spec.exclusive_with or template.id in theirs.exclusive_with
            found.append(Overlap(other.id, other.name, shared, pairs, exclusive))  # type: ignore[arg-type]
    return found


@dataclass
class Exclusive:
    template_id: int
    name: str
    declared_here: bool  # in this draft's exclusive_with (else the other SOP lists this one)


def exclusive_partners(session: Session, template: SopTemplate) -> list[Exclusive]:
    """The SOPs this one excludes both ways (互斥): those its draft lists, and
    the live ones whose version lists it (``scheduler.flows.exclusivity``)."""
    listed = {int(i) for i in (template.draft or {}).get("exclusive_with") or []}
    live, _ = enrollment.live_templates(session, template.target_kind)
    listing = {
        int(item.template.id or 0) for item in live if template.id in item.spec.exclusive_with
    }
    ids = sorted(listed | listing)
    names: dict[int, str] = {}
    if ids:
        names = dict(
            session.execute(  # type: ignore[arg-type]
                select(col(SopTemplate.id), col(SopTemplate.name)).where(
                    col(SopTemplate.id).in_(ids)
                )
            ).all()
        )
    return [Exclusive(i, names.get(i, f"#{i}"), i in listed) for i in ids]
