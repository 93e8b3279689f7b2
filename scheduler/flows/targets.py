"""A contact's or group's SOPs: which templates it is enrolled in, and how far."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment
from sop_templates.models import SopTemplate, TemplateVersion


def enrollments_of(session: Session, target_kind: str, target_id: int) -> list[dict[str, Any]]:
    """Every enrollment of the target with its template, version and delivery counts."""
    rows = session.execute(
        select(Enrollment, SopTemplate.name, SopTemplate.status, TemplateVersion.version)  # type: ignore[call-overload]
        .join(SopTemplate, col(SopTemplate.id) == Enrollment.template_id)
        .join(TemplateVersion, col(TemplateVersion.id) == Enrollment.version_id)
        .where(Enrollment.target_kind == target_kind, Enrollment.target_id == target_id)
        .order_by(col(Enrollment.enrolled_at).desc())
    ).all()
    counts: dict[int, dict[str, int]] = {}
    ids = [r[0].id for r in rows]
    if ids:
        for enrollment_id, status, n in session.execute(
            select(Delivery.enrollment_id, Delivery.status, func.count())  # type: ignore[call-overload]
            .where(col(Delivery.enrollment_id).in_(ids))
            .group_by(Delivery.enrollment_id, Delivery.status)
        ).all():
            counts.setdefault(enrollment_id, {})[status] = n
    out = []
    for enrollment, name, template_status, version in rows:
        c = counts.get(enrollment.id, {})
        out.append(
            {
                **enrollment.model_dump(),
                "template_name": name,
                "template_status": template_status,
                "version": version,
                "counts": c,
                "pending": sum(c.get(s, 0) for s in DeliveryStatus.PENDING),
            }
        )
    return out
