"""The SOP lifecycle in the UI: test sends, submit, approve or reject,
exclusivity, publish, pause, resume, archive. Each action redirects back to the
editor with what happened, in the operator's language."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.datastructures import FormData

from api import auth, editor_forms, template_actions
from api.auth import Approver, Author
from api.deps import (
    ClockDep,
    EngineDep,
    FormDep,
    SessionDep,
    get_settings,
)
from api.views import error_text, is_htmx, redirect, render, translator
from audiences import service as audiences_service
from scheduler.flows import authoring
from scheduler.outbox import service as scheduler_service
from sop_templates import approvals
from sop_templates import service as templates_service
from sop_templates.models import TemplateStatus
from sop_templates.service import NotFound, TemplateError
from sopbot.db import reader
from sopbot.ids import parse_id

router = APIRouter(include_in_schema=False)


@router.post("/templates/{template_id}/test-send", response_class=HTMLResponse)
async def test_send(
    template_id: int,
    request: Request,
    me: Author,
    engine: EngineDep,
    clock: ClockDep,
) -> Response:
    data = await request.form()
    target = str(data.get("target") or "").strip()
    touchpoint = str(data.get("touchpoint") or "") or None
    _ = translator(request)
    if not target:
        return _after(request, template_id, error=_("Choose who gets the test message."))
    try:
        row = await template_actions.test_send(
            request, me, engine, clock, template_id, target, touchpoint
        )
    except (audiences_service.NotFound, TemplateError, authoring.AuthoringError) as exc:
        return _after(request, template_id, error=error_text(request, exc))
    if is_htmx(request):
        rows = await asyncio.to_thread(_test_sends, engine, template_id)
        return render(request, "ui/_test_sends.html", {"test_sends": rows, "just_sent": row})
    if row.status == "sent":
        return _after(request, template_id, message="test_sent")
    return _after(request, template_id, error=row.error or row.status)


def _test_sends(engine: Engine, template_id: int) -> list[Any]:
    with Session(reader(engine)) as session:
        return authoring.test_sends(session, template_id, limit=10)


def _after(request: Request, template_id: int, *, message: str = "", error: str = "") -> Response:
    query = {"done": message} if message else {}
    if error:
        query["error"] = error
    return redirect(request, f"/templates/{template_id}?{urlencode(query)}")


# -- lifecycle ---------------------------------------------------------------------------


def _lifecycle(
    request: Request, session: Session, template_id: int, run: Callable[[], Any], done: str
) -> Response:
    """Run one lifecycle step; on a refusal show the editor with the reason."""
    try:
        with session.begin_nested():
            run()
    except (TemplateError, NotFound, scheduler_service.EnrollmentError) as exc:
        from api.routes.ui_templates import _editor  # the editor page, with the error

        template = templates_service.get_template(session, template_id)
        return _editor(
            request,
            session,
            get_settings(request),
            template,
            editor_forms.form_from_spec(template.draft),
            flash_error=error_text(request, exc),
            status=409,
        )
    return redirect(request, f"/templates/{template_id}?done={done}")


def _note(form: FormData) -> str:
    return str(form.get("note") or "")


@router.post("/templates/{template_id}/submit")
def submit(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    def run() -> None:
        template_actions.submit(request, session, me, template_id, clock.now())

    return _lifecycle(request, session, template_id, run, "submitted")


def _decide(
    request: Request,
    form: FormData,
    session: Session,
    me: auth.Principal,
    template_id: int,
    verdict: template_actions.Verdict,
    now: Any,
) -> Response:
    note = _note(form)
    reason_missing = verdict == "reject" and not note.strip()

    def run() -> None:
        if reason_missing:  # said in the operator's language, before anything changes
            _ = translator(request)
            raise approvals.ApprovalError(
                _("Write the reason for the rejection: the authors see it on the template.")
            )
        template_actions.decide(request, session, me, template_id, verdict, note, now)

    return _lifecycle(request, session, template_id, run, f"{verdict}d")


@router.post("/templates/{template_id}/approve")
def approve(
    template_id: int,
    request: Request,
    form: FormDep,
    me: Approver,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    return _decide(request, form, session, me, template_id, "approve", clock.now())


@router.post("/templates/{template_id}/reject")
def reject(
    template_id: int,
    request: Request,
    form: FormDep,
    me: Approver,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    return _decide(request, form, session, me, template_id, "reject", clock.now())


@router.post("/templates/{template_id}/exclusive")
def exclusive(
    template_id: int,
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    """One click on an overlap: "customers in this SOP no longer enter …" (or undo)."""
    other = parse_id(str(form.get("other") or "")) or 0

    def run() -> None:
        on = form.get("exclusive") != "off"
        template_actions.set_exclusive(request, session, me, template_id, other, on, clock.now())

    return _lifecycle(request, session, template_id, run, "exclusive")


@router.post("/templates/{template_id}/publish")
def publish(
    template_id: int,
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    migrate = str(form.get("migrate") or "keep")

    def run() -> None:
        template_actions.publish(request, session, me, template_id, migrate, clock.now())

    return _lifecycle(request, session, template_id, run, "published")


def _set_status(
    request: Request, session: Session, me: auth.Principal, template_id: int, status: str, now: Any
) -> Response:
    done = "paused" if status == TemplateStatus.PAUSED else "resumed"

    def run() -> None:
        template_actions.set_status(request, session, me, template_id, status, now)

    return _lifecycle(request, session, template_id, run, done)


@router.post("/templates/{template_id}/pause")
def pause(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    paused = TemplateStatus.PAUSED
    return _set_status(request, session, me, template_id, paused, clock.now())


@router.post("/templates/{template_id}/resume")
def resume(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    live = TemplateStatus.PUBLISHED
    return _set_status(request, session, me, template_id, live, clock.now())


@router.post("/templates/{template_id}/archive")
def archive(
    template_id: int, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    def run() -> None:
        template_actions.archive(request, session, me, template_id, clock.now())

    return _lifecycle(request, session, template_id, run, "archived")


# the material library's pages (素材库) are editor pages too
