"""The dashboard at ``/`` (the operator UI's home)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api import onboarding
from api.auth import Reader
from api.deps import ClockDep, EngineDep, SessionDep, SettingsDep
from api.routes import calendar_pages
from api.users import audit
from api.views import locale_of, render, zone_of
from scheduler.analytics import stats
from scheduler.operations import dashboard as dashboard_service
from scheduler.staff import service as staff_service
from sop_templates import approvals

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request,
    me: Reader,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> HTMLResponse:
    """The dashboard (运行状态): sends today, failures, backlog, next sends, channel
    health, templates waiting for approval, recent changes."""
    zone = zone_of(request)
    board = dashboard_service.dashboard(session, engine, settings, clock.now(), zone)
    return render(
        request,
        "ui/dashboard.html",
        {
            "board": board,
            "recent": audit.entries(session, limit=8),
            "templates": stats.overview(session, now=clock.now()),
            "staff_overdue": staff_service.overdue_by_account(
                session,
                clock.now(),
                since=clock.now() - timedelta(days=7),
                soon=timedelta(minutes=settings.staff_nudge_minutes),
            ),
            "next_sends": calendar_pages.next_send_lines(
                session, clock.now(), zone, locale_of(request)
            ),
            "rejected": approvals.rejected_drafts(session),
            "onboarding": onboarding.steps(session),
        },
    )
