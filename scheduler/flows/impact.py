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

from scheduler.flows import enrollment
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from sop_templates.models import SopTemplate
from sop_templates.schemas import TemplateSpec


@dataclass
class PublishImpact:
    valid: bool = True
    enrolls_now: bool = False  # group / fixed-start SOPs take in their segment at publish
    enrolled: int = 0  # targets enrolled at publish
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
        impact.enrolled = len(enrollment.segment_targets(session, spec, template.id, now))  # type: ignore[arg-type]
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
        ).scalar_one()
    return impact
