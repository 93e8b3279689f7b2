"""What a template operation does when a person asks for it, for the JSON API
and the operator UI alike: the domain call and the audit entry that says who
did it. The routes only read the request and shape the answer (JSON, or a
redirect / the editor with the reason)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api import auth
from api.users import service as users_service
from scheduler.flows import authoring, versions
from scheduler.flows.models import TestSend
from scheduler.outbox import service as scheduler_service
from sop_templates import approvals
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus
from sop_templates.schemas import TemplateSpec
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings


def _reviewer(me: auth.Principal) -> approvals.Reviewer:
    return approvals.Reviewer(me.user_id, me.username)


def _record(
    request: Request,
    session: Session,
    me: auth.Principal,
    action: str,
    template_id: int,
    summary: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    auth.record(
        request,
        session,
        me,
        action,
        object_kind="template",
        object_id=template_id,
        summary=summary,
        detail=detail,
    )


def _edited(
    request: Request,
    session: Session,
    me: auth.Principal,
    template: SopTemplate,
    action: str,
    now: datetime,
) -> None:
    approvals.note_edit(session, template.id, _reviewer(me), now)  # type: ignore[arg-type]
    _record(request, session, me, action, template.id, template.name)  # type: ignore[arg-type]


def create(
    request: Request,
    session: Session,
    me: auth.Principal,
    spec: dict[str, Any] | TemplateSpec,
    now: datetime,
) -> SopTemplate:
    """Create a draft from a spec (validated); ``me`` becomes one of its authors."""
    template = templates_service.create_template(session, spec, now)
    _edited(request, session, me, template, "template.create", now)
    return template


def update(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    spec: dict[str, Any] | TemplateSpec,
    now: datetime,
) -> SopTemplate:
    """Replace the draft; an edit voids a submission or approval of the previous one."""
    template = templates_service.update_draft(session, template_id, spec, now)
    _edited(request, session, me, template, "template.update", now)
    return template


def publish(
    request: Request,
    session: Session,
    me: auth.Principal,
    settings: Settings,
    template_id: int,
    migrate: str,
    now: datetime,
) -> dict[str, Any]:
    """Publish the draft as a new version (approved first where the workspace
    requires it). Returns what happened: the version, who was enrolled, who moved."""
    outcome = versions.publish(
        session,
        template_id,
        now,
        migrate=migrate,
        require_approval=users_service.requires_approval(session, settings.require_approval),
    )
    version = outcome.version
    out = {
        "template_id": template_id,
        "version_id": version.id,
        "version": version.version,
        "enrolled": outcome.enrolled,
        "deliveries": outcome.deliveries,
        "migrate": migrate,
        "moved": outcome.moved.__dict__,
    }
    _record(
        request,
        session,
        me,
        "template.publish",
        template_id,
        f"v{version.version} ({migrate})",
        detail=out,
    )
    return out


def set_status(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    status: str,
    now: datetime,
) -> SopTemplate:
    """Pause (``status`` paused) or resume (published) a live template."""
    template = templates_service.set_status(session, template_id, status, now)
    action = "template.pause" if status == TemplateStatus.PAUSED else "template.resume"
    _record(request, session, me, action, template_id, template.name)
    return template


def archive(
    request: Request, session: Session, me: auth.Principal, template_id: int, now: datetime
) -> int:
    """Archive the template; returns how many pending deliveries were cancelled."""
    cancelled = scheduler_service.archive_template(session, template_id, now)
    summary = f"{cancelled} pending deliveries cancelled"
    _record(request, session, me, "template.archive", template_id, summary)
    return cancelled


def submit(
    request: Request, session: Session, me: auth.Principal, template_id: int, now: datetime
) -> None:
    """Submit the draft for approval."""
    approvals.submit(session, template_id, _reviewer(me), now)
    _record(request, session, me, "template.submit", template_id)


_VERDICTS = {"approve": approvals.approve, "reject": approvals.reject}


def decide(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    verdict: Literal["approve", "reject"],
    note: str | None,
    now: datetime,
) -> None:
    """Approve the submitted draft (not by one of its authors), or send it back
    to them with a note."""
    _VERDICTS[verdict](session, template_id, _reviewer(me), now, note)
    _record(request, session, me, f"template.{verdict}", template_id, note or "")


def enroll(
    request: Request,
    session: Session,
    me: auth.Principal,
    template: SopTemplate,
    targets: Sequence[tuple[int, datetime]],
    now: datetime,
    *,
    named: str = "",
    detail: dict[str, Any] | None = None,
) -> scheduler_service.EnrollResult:
    """Enroll ``(target id, anchor)`` pairs into the live version. ``named``
    says in the audit entry which targets these were, where one line can."""
    result = scheduler_service.enroll(session, template, targets, now)
    summary = f"{result.enrolled} enrolled"
    _record(
        request,
        session,
        me,
        "template.enroll",
        template.id,  # type: ignore[arg-type]
        f"{named}: {summary}" if named else summary,
        detail=detail,
    )
    return result


async def test_send(
    request: Request,
    me: auth.Principal,
    engine: Engine,
    clock: Clock,
    template_id: int,
    target: str | int,
    touchpoint: str | None,
) -> TestSend:
    """Send one touchpoint of the draft to one target now and record who asked
    (the send itself commits on its own, so the audit entry gets its own session)."""
    row = await authoring.test_send(
        engine,
        request.app.state.runtime.channels,
        clock,
        template_id=template_id,
        target_key=target,
        touchpoint=touchpoint,
        requested_by=me.user_id,
        requested_by_name=me.username,
    )
    with session_scope(engine) as session:
        _record(
            request,
            session,
            me,
            "template.test_send",
            template_id,
            f"{row.touchpoint_name} → {row.target_external_id}: {row.status}",
            detail={"test_send_id": row.id, "error": row.error},
        )
    return row
