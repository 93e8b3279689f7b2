"""What a template operation does when a person asks for it, for the JSON API
and the operator UI alike: the domain call and the audit entry that says who
did it. The routes only read the request and shape the answer (JSON, or a
redirect / the editor with the reason).

Publish, enroll, pause, resume and archive are ``scheduler.flows.lifecycle``'s;
this module only says who asks (:func:`request_actor` for a request,
:func:`system_actor` for the CLI and the demo), with the workspace's approval
setting and the audit writer, which live in this package."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api import auth
from api.users import audit as audit_log
from api.users import service as users_service
from scheduler.flows import authoring, lifecycle
from scheduler.flows.models import TestSend
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.material_links import MaterialSigner
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


def request_actor(request: Request, session: Session, me: auth.Principal) -> lifecycle.Actor:
    """The lifecycle's view of a person asking through the API or the UI."""
    settings: Settings = request.app.state.settings

    def audit(action: str, template_id: int, summary: str, detail: dict[str, Any] | None) -> None:
        _record(request, session, me, action, template_id, summary, detail)

    return lifecycle.Actor(
        require_approval=users_service.requires_approval(session, settings.require_approval),
        audit=audit,
    )


def system_actor(
    session: Session, settings: Settings, now: datetime, name: str = "cli"
) -> lifecycle.Actor:
    """The lifecycle's view of the CLI or the demo: the same approval rule as
    the workspace's users, audited under ``name``."""

    def audit(action: str, template_id: int, summary: str, detail: dict[str, Any] | None) -> None:
        audit_log.record(
            session,
            audit_log.Actor(None, name),
            action,
            now,
            object_kind="template",
            object_id=template_id,
            summary=summary,
            detail=detail,
        )

    return lifecycle.Actor(
        require_approval=users_service.requires_approval(session, settings.require_approval),
        audit=audit,
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


def set_exclusive(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    other_id: int,
    exclusive: bool,
    now: datetime,
) -> SopTemplate:
    """The one-click exclusivity of an overlap warning: the draft excludes (or
    no longer excludes) ``other_id`` both ways (``scheduler.flows.exclusivity``);
    it holds once the draft is published."""
    templates_service.get_template(session, other_id)  # NotFound for an unknown SOP
    template = templates_service.get_template(session, template_id)
    draft = dict(template.draft)
    ids = {int(i) for i in draft.get("exclusive_with") or []}
    if exclusive:
        ids.add(other_id)
    else:
        ids.discard(other_id)
    draft["exclusive_with"] = sorted(ids - {template_id})
    return update(request, session, me, template_id, draft, now)


def publish(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    migrate: str,
    now: datetime,
) -> dict[str, Any]:
    """Publish the draft as a new version (``lifecycle.publish``). Returns what
    happened: the version, who was enrolled, who moved."""
    actor = request_actor(request, session, me)
    outcome = lifecycle.publish(session, template_id, now, actor, migrate=migrate)
    return outcome.as_dict(template_id)


def set_status(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    status: str,
    now: datetime,
) -> SopTemplate:
    """Pause (``status`` paused) or resume (published) a live template."""
    actor = request_actor(request, session, me)
    if status == TemplateStatus.PAUSED:
        return lifecycle.pause(session, template_id, now, actor)
    if status == TemplateStatus.PUBLISHED:
        return lifecycle.resume(session, template_id, now, actor)
    raise templates_service.TemplateError(f"cannot set status {status!r} directly")


def archive(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    now: datetime,
) -> int:
    """Archive the template; returns how many pending deliveries were cancelled."""
    actor = request_actor(request, session, me)
    return lifecycle.archive(session, template_id, now, actor)


def submit(
    request: Request, session: Session, me: auth.Principal, template_id: int, now: datetime
) -> None:
    """Submit the draft for approval."""
    approvals.submit(session, template_id, _reviewer(me), now)
    _record(request, session, me, "template.submit", template_id)


Verdict = Literal["approve", "reject"]
_VERDICTS = {"approve": approvals.approve, "reject": approvals.reject}


def decide(
    request: Request,
    session: Session,
    me: auth.Principal,
    template_id: int,
    verdict: Verdict,
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
    """Enroll ``(target id, anchor)`` pairs into the live version by hand."""
    actor = request_actor(request, session, me)
    return lifecycle.enroll(session, template, targets, now, actor, named=named, detail=detail)


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
        sign_materials=MaterialSigner(engine, request.app.state.settings),
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
