"""SOP templates: author, validate, publish, pause, resume, archive, enroll."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from api.deps import ClockDep, SessionDep
from audiences import service as audiences_service
from scheduler import membership
from scheduler import service as scheduler_service
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus
from sopbot.clock import ensure_utc

router = APIRouter(prefix="/api/templates", tags=["templates"])


class TemplateOut(BaseModel):
    id: int
    name: str
    target_kind: str
    status: str
    current_version_id: int | None
    created_at: datetime
    updated_at: datetime
    draft: dict[str, Any]
    counts: dict[str, int] = Field(default_factory=dict)


def _out(template: SopTemplate, counts: dict[str, int] | None = None) -> TemplateOut:
    return TemplateOut.model_validate({**template.model_dump(), "counts": counts or {}})


SPEC_EXAMPLE = {
    "name": "新好友 SOP",
    "target": "contact",
    "timezone": "Asia/Shanghai",
    "anchor": "join",
    "touchpoints": [
        {"name": "welcome", "timing": "+0m", "content": ["{{ contact.name }}，欢迎！"]},
        {"name": "coupon", "timing": "+3h", "content": ["送你一张优惠券"]},
        {"name": "reminder", "timing": "day 2 20:00", "content": ["今晚 8 点直播"]},
    ],
}


@router.get("", response_model=list[TemplateOut])
def list_templates(session: SessionDep) -> list[TemplateOut]:
    return [_out(t) for t in templates_service.list_templates(session)]


@router.post("", response_model=TemplateOut, status_code=201)
def create_template(
    session: SessionDep, clock: ClockDep, spec: dict[str, Any] = Body(examples=[SPEC_EXAMPLE])
) -> TemplateOut:
    """Create a draft from a template spec (validated: timings, zone, cron, Jinja)."""
    return _out(templates_service.create_template(session, spec, clock.now()))


@router.post("/validate")
def validate_template(spec: dict[str, Any] = Body(examples=[SPEC_EXAMPLE])) -> dict[str, Any]:
    """Validate a spec without saving it; 422 lists every problem with its location."""
    parsed = templates_service.parse_spec(spec)
    return {"ok": True, "touchpoints": [t.timing.describe() for t in parsed.touchpoints]}


@router.get("/{template_id}", response_model=TemplateOut)
def get_template(template_id: int, session: SessionDep) -> TemplateOut:
    template = templates_service.get_template(session, template_id)
    return _out(template, scheduler_service.delivery_counts(session, template_id))


@router.put("/{template_id}", response_model=TemplateOut)
def update_template(
    template_id: int, session: SessionDep, clock: ClockDep, spec: dict[str, Any] = Body()
) -> TemplateOut:
    """Replace the draft. A published template keeps running until published again."""
    return _out(templates_service.update_draft(session, template_id, spec, clock.now()))


@router.post("/{template_id}/publish")
def publish(template_id: int, session: SessionDep, clock: ClockDep) -> dict[str, Any]:
    """Freeze the draft as a new immutable version and make it live. A group
    template or a fixed-start tagged template enrolls its whole segment now."""
    result = membership.publish_and_enroll(session, template_id, clock.now())
    version = result.version
    return {
        "template_id": template_id,
        "version_id": version.id,
        "version": version.version,
        "enrolled": result.enrolled,
        "deliveries": result.deliveries,
    }


@router.post("/{template_id}/pause", response_model=TemplateOut)
def pause(template_id: int, session: SessionDep, clock: ClockDep) -> TemplateOut:
    """Hold deliveries: nothing goes out until resumed (past grace they are missed)."""
    return _out(
        templates_service.set_status(session, template_id, TemplateStatus.PAUSED, clock.now())
    )


@router.post("/{template_id}/resume", response_model=TemplateOut)
def resume(template_id: int, session: SessionDep, clock: ClockDep) -> TemplateOut:
    return _out(
        templates_service.set_status(session, template_id, TemplateStatus.PUBLISHED, clock.now())
    )


@router.post("/{template_id}/archive")
def archive(template_id: int, session: SessionDep, clock: ClockDep) -> dict[str, Any]:
    """Archive: pending deliveries are cancelled with the reason."""
    cancelled = scheduler_service.archive_template(session, template_id, clock.now())
    return {"template_id": template_id, "status": "archived", "cancelled": cancelled}


class EnrollIn(BaseModel):
    targets: list[str | int] = Field(
        min_length=1, description="contact or group ids, or their external ids"
    )
    anchor_at: datetime | None = Field(
        None, description="anchor instant for all targets (default: each target's join time)"
    )


@router.post("/{template_id}/enrollments")
def enroll(
    template_id: int, body: EnrollIn, session: SessionDep, clock: ClockDep
) -> dict[str, Any]:
    """Enroll targets into the live version. Enrolling a target twice is a no-op."""
    template = templates_service.get_template(session, template_id)
    now = clock.now()
    pairs = []
    for key in body.targets:
        target = (
            audiences_service.find_contact(session, key)
            if template.target_kind == "contact"
            else audiences_service.find_group(session, key)
        )
        anchor = ensure_utc(body.anchor_at) if body.anchor_at else target.joined_at
        pairs.append((target.id, anchor))
    result = scheduler_service.enroll(session, template, pairs, now)
    return result.__dict__
