"""The staff inbox (员工待办, a mobile page opened from the digest's signed link,
also inside WeCom's in-app browser and sidebar), and the operator's staff
execution API: analytics, CSV, overdue tasks, reassigning, deadlines.

The inbox needs no login: the link's token (``scheduler.staff.links``, signed
with the workspace secret key, expiring) is the credential, and every action
posts it back; a staff member only ever sees and changes their own tasks.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from api import auth, guards
from api.deps import ClockDep, ReaderDep, SessionDep, SettingsDep
from api.i18n import N_
from api.views import render, translator
from scheduler.analytics import execution
from scheduler.staff import links
from scheduler.staff import service as staff_service
from scheduler.staff.service import StaffTaskError
from sop_templates import materials

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/api/staff", tags=["staff"])

# The service's refusals, for translation (scheduler.staff.service).
STAFF_ERRORS = (
    N_("no task chosen"),
    N_(
        "a chosen task is not an open task of yours any more (done, skipped, expired "
        "or someone else's)"
    ),
    N_("say why the task is skipped"),
    N_("the reason is longer than 200 characters"),
    N_("the reminder time must be in the future"),
    N_("the reminder time must be before the task's deadline"),
)
SKIP_REASONS = (
    N_("Customer already contacted"),
    N_("Customer not suitable for this message"),
    N_("Customer unreachable"),
)
POSTPONE_MINUTES = (30, 60, 120)
INBOX_POLICY = guards.CONTENT_SECURITY_POLICY.replace(
    "img-src 'self' data:", "img-src 'self' data: https: http:"
)


# -- the staff member's page -----------------------------------------------------


def _refused(request: Request, exc: links.LinkRefused | None) -> HTMLResponse:
    if exc is None:
        problem = N_("This link is incomplete: open it again from the reminder message.")
    elif exc.expired:
        problem = N_("This link has expired. Open the latest reminder message for a new one.")
    else:
        problem = N_("This link is not valid: it has been changed or copied incompletely.")
    gettext = translator(request)
    return render(
        request,
        "ui/staff/refused.html",
        {"problem": gettext(problem)},
        status_code=400 if exc is None else 403,
    )


def _account(request: Request, token: str | None, now: datetime) -> int | HTMLResponse:
    if not token:
        return _refused(request, None)
    try:
        return links.verify(auth.secret_key(request), token, now).account_id
    except links.LinkRefused as exc:
        return _refused(request, exc)


def _back(token: str, pinned: str | None, **extra: str) -> str:
    query = {"t": token, **({"external_userid": pinned} if pinned else {}), **extra}
    return f"/staff/inbox?{urlencode(query)}"


@router.get("/staff/inbox", response_class=HTMLResponse)
def inbox_page(
    request: Request, session: ReaderDep, clock: ClockDep, settings: SettingsDep
) -> HTMLResponse:
    now = clock.now()
    params = request.query_params
    account_id = _account(request, params.get("t"), now)
    if isinstance(account_id, HTMLResponse):
        return account_id
    zone = ZoneInfo(settings.default_timezone)
    day_start = datetime.combine(now.astimezone(zone).date(), time(), zone)
    pinned = params.get("external_userid") or None
    box = staff_service.inbox(
        session,
        account_id,
        now,
        nudge=timedelta(minutes=settings.staff_nudge_minutes),
        day_start=day_start,
        pinned_external_id=pinned,
    )
    # images and files of the material library: their signed public address
    # (the staff member has no login to fetch the library's own address with)
    key, expires = auth.secret_key(request), materials.link_expiry(now, settings.material_link_days)
    for task in [t for step in box.open for t in step.tasks] + box.finished:
        task.parts = materials.public_parts(task.parts, key, settings.public_base(), expires)
    gettext = translator(request)
    notice = {
        "done": N_("Marked as sent: %(n)s"),
        "skipped": N_("Skipped: %(n)s"),
        "postponed": N_("You will be reminded again: %(n)s"),
    }
    message = None
    for key, text in notice.items():
        if params.get(key, "").isdigit():
            message = gettext(text) % {"n": params[key]}
    error = params.get("error")
    page = render(
        request,
        "ui/staff/inbox.html",
        {
            "box": box,
            "token": params["t"],
            "pinned": pinned,
            "now": now,
            "message": message,
            "error": gettext(error) if error in STAFF_ERRORS else None,
            "skip_reasons": [gettext(r) for r in SKIP_REASONS],
            "postpone_choices": POSTPONE_MINUTES,
        },
    )
    # The content's images live on the operator's CDN: the page may show them.
    page.headers["content-security-policy"] = INBOX_POLICY
    return page


def _act(request: Request, token: str, pinned: str | None, done: Any) -> Response:
    try:
        n = done()
    except StaffTaskError as exc:
        return RedirectResponse(_back(token, pinned, error=str(exc)), status_code=303)
    return RedirectResponse(_back(token, pinned, **n), status_code=303)


Ids = Annotated[list[int], Form(default_factory=list)]
Token = Annotated[str, Form(min_length=0, max_length=200)]
Pinned = Annotated[str | None, Form(max_length=128)]


@router.post("/staff/inbox/done")
def inbox_done(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    ids: Ids,
    t: Token = "",
    external_userid: Pinned = None,
) -> Response:
    now = clock.now()
    account_id = _account(request, t, now)
    if isinstance(account_id, HTMLResponse):
        return account_id
    return _act(
        request,
        t,
        external_userid,
        lambda: {"done": str(staff_service.mark_done(session, account_id, ids, now))},
    )


@router.post("/staff/inbox/skip")
def inbox_skip(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    ids: Ids,
    t: Token = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    other: Annotated[str, Form(max_length=1000)] = "",
    external_userid: Pinned = None,
) -> Response:
    now = clock.now()
    account_id = _account(request, t, now)
    if isinstance(account_id, HTMLResponse):
        return account_id
    why = other.strip() or reason
    return _act(
        request,
        t,
        external_userid,
        lambda: {"skipped": str(staff_service.skip(session, account_id, ids, why, now))},
    )


@router.post("/staff/inbox/postpone")
def inbox_postpone(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    ids: Ids,
    t: Token = "",
    minutes: Annotated[int, Form(ge=1, le=24 * 60)] = 30,
    external_userid: Pinned = None,
) -> Response:
    now = clock.now()
    account_id = _account(request, t, now)
    if isinstance(account_id, HTMLResponse):
        return account_id
    until = now + timedelta(minutes=minutes)
    return _act(
        request,
        t,
        external_userid,
        lambda: {"postponed": str(staff_service.postpone(session, account_id, ids, until, now))},
    )


# -- the operator's API ------------------------------------------------------------


def _filter(
    date_from: date | None, date_to: date | None, template_id: int | None, account_id: int | None
) -> execution.ExecutionFilter:
    if date_from and date_to and date_to < date_from:
        raise HTTPException(422, "date_to is before date_from")
    return execution.ExecutionFilter(date_from, date_to, template_id, account_id)


DateQ = Annotated[date | None, Query(description="assigned on or after this local date")]
DateToQ = Annotated[date | None, Query(description="assigned on or before this local date")]
IdQ = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


@api_router.get("/execution")
def execution_json(
    session: ReaderDep,
    settings: SettingsDep,
    date_from: DateQ = None,
    date_to: DateToQ = None,
    template_id: IdQ = None,
    account_id: IdQ = None,
) -> dict[str, Any]:
    """Staff execution per SOP, step and staff member (ranked): assigned, done,
    done on time, skipped by reason, missed, completion and on-time rates."""
    flt = _filter(date_from, date_to, template_id, account_id)
    zone = ZoneInfo(settings.default_timezone)
    return execution.execution_report(session, flt, zone).as_dict()


@api_router.get("/execution.csv", response_class=Response)
def execution_csv(
    session: ReaderDep,
    settings: SettingsDep,
    date_from: DateQ = None,
    date_to: DateToQ = None,
    template_id: IdQ = None,
    account_id: IdQ = None,
) -> Response:
    """The same report as CSV (UTF-8 with BOM, Chinese headers)."""
    flt = _filter(date_from, date_to, template_id, account_id)
    report = execution.execution_report(session, flt, ZoneInfo(settings.default_timezone))
    return Response(
        execution.to_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="staff-execution.csv"'},
    )


@api_router.get("/overdue")
def overdue(session: ReaderDep, clock: ClockDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Per staff member: open tasks, those due soon, and tasks missed in the last 7 days."""
    now = clock.now()
    rows = staff_service.overdue_by_account(
        session,
        now,
        since=now - timedelta(days=7),
        soon=timedelta(minutes=settings.staff_nudge_minutes),
    )
    return [r.__dict__ for r in rows]


class ReassignIn(BaseModel):
    from_account_id: int = Field(ge=1, le=2**31 - 1)
    to_account_id: int = Field(ge=1, le=2**31 - 1)


class DeadlineIn(BaseModel):
    delivery_ids: list[int] = Field(min_length=1, max_length=10_000)
    deadline: datetime = Field(description="without an offset: the workspace time zone")


class StepDeadlineIn(BaseModel):
    template_id: int = Field(ge=1, le=2**31 - 1)
    touchpoint: str = Field(min_length=1, max_length=100)
    hours: float | None = Field(None, description="after the step's due time; null: its grace")


class LinkIn(BaseModel):
    account_id: int = Field(ge=1, le=2**31 - 1)


def _refuse(exc: StaffTaskError) -> HTTPException:
    return HTTPException(422, str(exc))


@api_router.post("/tasks/reassign")
def reassign(body: ReassignIn, session: SessionDep, clock: ClockDep) -> dict[str, int]:
    """Hand every open task of a staff member to another (someone left)."""
    try:
        moved = staff_service.reassign(
            session, body.from_account_id, body.to_account_id, clock.now()
        )
    except StaffTaskError as exc:
        raise _refuse(exc) from exc
    return {"moved": moved}


@api_router.post("/tasks/deadline")
def extend_deadline(
    body: DeadlineIn, session: SessionDep, clock: ClockDep, settings: SettingsDep
) -> dict[str, int]:
    """Give open tasks a later deadline."""
    deadline = body.deadline
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=ZoneInfo(settings.default_timezone))
    try:
        n = staff_service.extend_deadline(session, body.delivery_ids, deadline, clock.now())
    except StaffTaskError as exc:
        raise _refuse(exc) from exc
    return {"extended": n}


@api_router.put("/step-deadlines")
def step_deadline(body: StepDeadlineIn, session: SessionDep, clock: ClockDep) -> dict[str, Any]:
    """A step's deadline for its future staff tasks (hours after its due time)."""
    try:
        staff_service.set_step_deadline(
            session, body.template_id, body.touchpoint, body.hours, clock.now()
        )
    except StaffTaskError as exc:
        raise _refuse(exc) from exc
    return body.model_dump()


@api_router.post("/links")
def staff_link(
    body: LinkIn, request: Request, clock: ClockDep, settings: SettingsDep
) -> dict[str, str]:
    """A signed inbox link for a staff account (valid ``staff_link_hours``)."""
    now = clock.now()
    url = links.inbox_url(settings, auth.secret_key(request), body.account_id, now)
    expires = now + timedelta(hours=settings.staff_link_hours)
    return {"url": url, "expires_at": expires.isoformat()}
