"""SOP templates: author, validate, publish, pause, resume, archive, enroll."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field

from api import template_actions
from api.auth import Approver, Author, Principal
from api.deps import ClockDep, EngineDep, ReaderDep, SessionDep, SettingsDep
from api.users import audit
from audiences import service as audiences_service
from scheduler.flows import authoring, fan_out
from scheduler.outbox import policies
from scheduler.outbox import service as scheduler_service
from sop_templates import approvals, library
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus
from sop_templates.timing import as_instant, get_zone

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
    # deliveries of a fixed start's later touchpoints the planner has yet to write
    planned_later: int = 0


def _out(
    template: SopTemplate, counts: dict[str, int] | None = None, planned_later: int = 0
) -> TemplateOut:
    return TemplateOut.model_validate(
        {**template.model_dump(), "counts": counts or {}, "planned_later": planned_later}
    )


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
def list_templates(session: ReaderDep) -> list[TemplateOut]:
    return [_out(t) for t in templates_service.list_templates(session)]


@router.post("", response_model=TemplateOut, status_code=201)
def create_template(
    request: Request,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
    spec: dict[str, Any] = Body(examples=[SPEC_EXAMPLE]),
) -> TemplateOut:
    """Create a draft from a template spec (validated: timings, zone, cron, Jinja)."""
    return _out(template_actions.create(request, session, me, spec, clock.now()))


@router.get("/library")
def list_library() -> list[dict[str, Any]]:
    """The built-in scenarios (new friends, tagged customers, group chats) to start from."""
    return library.catalog()


@router.post("/validate")
def validate_template(
    session: SessionDep, spec: dict[str, Any] = Body(examples=[SPEC_EXAMPLE])
) -> dict[str, Any]:
    """Validate a spec without saving it, as saving and publishing do: the sample
    context, a few real members of the segment, the bound channel's limits.
    422 lists every problem with its location."""
    parsed = templates_service.check_spec(session, spec)
    return {"ok": True, "touchpoints": [t.timing.describe() for t in parsed.touchpoints]}


@router.get("/{template_id}", response_model=TemplateOut)
def get_template(template_id: int, session: SessionDep) -> TemplateOut:
    template = templates_service.get_template(session, template_id)
    return _out(
        template,
        scheduler_service.delivery_counts(session, template_id),
        fan_out.waiting(session, template_id),
    )


@router.put("/{template_id}", response_model=TemplateOut)
def update_template(
    template_id: int,
    request: Request,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
    spec: dict[str, Any] = Body(),
) -> TemplateOut:
    """Replace the draft. A published template keeps running until published again.
    Editing voids a submission or approval of the previous draft."""
    return _out(template_actions.update(request, session, me, template_id, spec, clock.now()))


class PublishIn(BaseModel):
    migrate: str = Field(
        "keep",
        pattern="^(keep|move)$",
        description="contacts mid-SOP: keep their version, or move pending touchpoints "
        "to the new version by touchpoint name",
    )


@router.post("/{template_id}/publish")
def publish(
    template_id: int,
    request: Request,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
    body: PublishIn | None = Body(None),
) -> dict[str, Any]:
    """Freeze the draft as a new immutable version and make it live. A group
    template or a fixed-start tagged template enrolls its whole segment now.
    When the workspace requires approval, the draft must have been approved."""
    migrate = body.migrate if body else "keep"
    return template_actions.publish(request, session, me, template_id, migrate, clock.now())


@router.post("/{template_id}/pause", response_model=TemplateOut)
def pause(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> TemplateOut:
    """Hold deliveries: nothing goes out until resumed (past grace they are missed)."""
    paused = TemplateStatus.PAUSED
    return _out(template_actions.set_status(request, session, me, template_id, paused, clock.now()))


@router.post("/{template_id}/resume", response_model=TemplateOut)
def resume(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> TemplateOut:
    """Release held deliveries (each goes out once; those past their grace are missed)."""
    live = TemplateStatus.PUBLISHED
    return _out(template_actions.set_status(request, session, me, template_id, live, clock.now()))


@router.post("/{template_id}/archive")
def archive(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> dict[str, Any]:
    """Archive: pending deliveries are cancelled with the reason."""
    cancelled = template_actions.archive(request, session, me, template_id, clock.now())
    return {"template_id": template_id, "status": "archived", "cancelled": cancelled}


class ReviewIn(BaseModel):
    note: str | None = Field(None, max_length=1000, description="for the authors")


def _review_out(session: Any, template_id: int) -> dict[str, Any]:
    template = templates_service.get_template(session, template_id)
    return {
        "template_id": template_id,
        "status": template.status,
        **approvals.review_state(session, template),
    }


@router.post("/{template_id}/submit")
def submit(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> dict[str, Any]:
    """Submit the draft for approval (审批)."""
    template_actions.submit(request, session, me, template_id, clock.now())
    return _review_out(session, template_id)


def _decide(
    request: Request,
    session: Any,
    me: Principal,
    template_id: int,
    verdict: template_actions.Verdict,
    body: ReviewIn | None,
    now: datetime,
) -> dict[str, Any]:
    note = body.note if body else None
    template_actions.decide(request, session, me, template_id, verdict, note, now)
    return _review_out(session, template_id)


@router.post("/{template_id}/approve")
def approve(
    template_id: int,
    request: Request,
    me: Approver,
    session: SessionDep,
    clock: ClockDep,
    body: ReviewIn | None = Body(None),
) -> dict[str, Any]:
    """Approve the submitted draft. Its authors cannot approve it."""
    return _decide(request, session, me, template_id, "approve", body, clock.now())


@router.post("/{template_id}/reject")
def reject(
    template_id: int,
    request: Request,
    me: Approver,
    session: SessionDep,
    clock: ClockDep,
    body: ReviewIn | None = Body(None),
) -> dict[str, Any]:
    """Send the draft back with a note."""
    return _decide(request, session, me, template_id, "reject", body, clock.now())


@router.get("/{template_id}/review")
def review(template_id: int, session: SessionDep) -> dict[str, Any]:
    """The draft's approval state: authors, submitted by, approved or rejected by."""
    return _review_out(session, template_id)


@router.get("/{template_id}/versions")
def list_versions(template_id: int, session: SessionDep) -> list[dict[str, Any]]:
    """Published versions, newest first (immutable)."""
    templates_service.get_template(session, template_id)
    return [
        {"id": v.id, "version": v.version, "published_at": v.published_at, "spec": v.spec}
        for v in templates_service.list_versions(session, template_id)
    ]


@router.get("/{template_id}/timeline")
def timeline(
    template_id: int,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    sample_at: datetime | None = Query(
        None,
        description="when the sample target joins / is tagged (default: now); "
        "a time without an offset is in the template's zone",
    ),
) -> dict[str, Any]:
    """When each touchpoint of the draft fires for a target joining at ``sample_at``:
    due times, quiet-hours deferrals and skips, as the scheduler computes them."""
    spec = templates_service.parse_spec(templates_service.get_template(session, template_id).draft)
    result = authoring.timeline(
        spec,
        _sample_instant(sample_at, spec.timezone, clock.now()),
        defaults=policies.WorkspaceDefaults.from_settings(settings),
    )
    return {**result.__dict__, "entries": [e.__dict__ for e in result.entries]}


def _sample_instant(value: datetime | None, zone_name: str, now: datetime) -> datetime:
    return now if value is None else as_instant(value, get_zone(zone_name))


@router.get("/{template_id}/preview")
def preview(
    template_id: int,
    session: SessionDep,
    target: str | None = Query(None, description="contact/group id or external id; none: sample"),
) -> dict[str, Any]:
    """Every touchpoint of the draft rendered for a real or the sample target."""
    spec = templates_service.parse_spec(templates_service.get_template(session, template_id).draft)
    result = authoring.preview(session, spec, target)
    return {**result.__dict__, "items": [i.__dict__ for i in result.items]}


class TestSendIn(BaseModel):
    target: str | int = Field(description="contact/group id or external id")
    touchpoint: str | None = Field(None, description="touchpoint name (default: the first)")


@router.post("/{template_id}/test-send")
async def test_send(
    template_id: int,
    body: TestSendIn,
    request: Request,
    me: Author,
    engine: EngineDep,
    clock: ClockDep,
) -> dict[str, Any]:
    """Send one touchpoint of the draft to one target now, through the template's
    channel, and record it (the test send is not a delivery of the SOP)."""
    row = await template_actions.test_send(
        request, me, engine, clock, template_id, body.target, body.touchpoint
    )
    return row.model_dump()


@router.get("/{template_id}/test-sends")
def list_test_sends(template_id: int, session: SessionDep) -> list[dict[str, Any]]:
    return [t.model_dump() for t in authoring.test_sends(session, template_id)]


@router.get("/{template_id}/audit")
def template_audit(template_id: int, session: SessionDep) -> list[dict[str, Any]]:
    """Who changed this template, when, and what."""
    return [
        e.model_dump()
        for e in audit.entries(session, object_kind="template", object_id=template_id)
    ]


class EnrollIn(BaseModel):
    targets: list[str | int] = Field(
        min_length=1, description="contact or group ids, or their external ids"
    )
    anchor_at: datetime | None = Field(
        None, description="anchor instant for all targets (default: each target's join time)"
    )


@router.post("/{template_id}/enrollments")
def enroll(
    template_id: int,
    body: EnrollIn,
    request: Request,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
) -> dict[str, Any]:
    """Enroll targets into the live version. Enrolling a target twice is a no-op."""
    template = templates_service.get_template(session, template_id)
    now = clock.now()
    pairs: list[tuple[int, datetime]] = []
    for key in body.targets:
        target = (
            audiences_service.find_contact(session, key)
            if template.target_kind == "contact"
            else audiences_service.find_group(session, key)
        )
        anchor = body.anchor_at or target.joined_at  # no UTC offset: template time
        assert target.id is not None  # a stored row
        pairs.append((target.id, anchor))
    result = template_actions.enroll(
        request,
        session,
        me,
        template,
        pairs,
        now,
        detail={"targets": [str(t) for t in body.targets][:100]},
    )
    return result.__dict__
