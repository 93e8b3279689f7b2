"""Operator UI: the forecast panel of the editor (also shown beside the publish
button) and the outcome section of the report (conversions, funnel, variants,
lift). Loaded into their pages as partials; thin."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from api.auth import Reader
from api.deps import ClockDep, ReaderDep, SettingsDep
from api.views import error_text, locale_of, render
from scheduler.analytics import outcomes
from scheduler.flows import forecast as forecasting
from scheduler.outbox import policies
from sop_templates import service as templates_service
from sop_templates.service import TemplateError

router = APIRouter(include_in_schema=False)


@router.get("/templates/{template_id}/forecast", response_class=HTMLResponse)
def forecast_panel(
    template_id: int,
    request: Request,
    me: Reader,
    session: ReaderDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    template = templates_service.get_template(session, template_id)
    result, error = None, None
    try:
        result = forecasting.forecast(
            session,
            template_id,
            clock.now(),
            workspace=policies.WorkspaceDefaults.from_settings(settings),
        )
    except TemplateError as exc:
        error = error_text(request, exc)
    return render(
        request, "ui/_forecast.html", {"template": template, "forecast": result, "error": error}
    )


@router.get("/report/{template_id}/outcomes", response_class=HTMLResponse)
def outcomes_panel(template_id: int, request: Request, me: Reader, session: ReaderDep) -> Response:
    template = templates_service.get_template(session, template_id)
    return render(
        request,
        "ui/_outcomes.html",
        {
            "template": template,
            "outcome": outcomes.report(session, template_id),
            "locale_is_zh": locale_of(request).startswith("zh"),
        },
    )
