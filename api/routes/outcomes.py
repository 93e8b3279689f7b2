"""What an SOP achieved (conversions, funnel, variants, lift) and what a draft
would do (the forecast before publish)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from api.deps import ClockDep, ReaderDep, SettingsDep
from scheduler.analytics import outcomes
from scheduler.analytics.log import MAX_ID
from scheduler.flows import forecast as forecasting
from scheduler.outbox import policies
from sop_templates import service as templates_service

router = APIRouter(prefix="/api/templates", tags=["outcomes"])
TemplateId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("/{template_id}/outcomes", response_model=outcomes.OutcomeReport)
def template_outcomes(template_id: TemplateId, session: ReaderDep) -> outcomes.OutcomeReport:
    """Conversions, the per-step funnel (enrolled → reached → clicked → converted),
    per version and variant, variant comparisons and the lift over the holdout."""
    templates_service.get_template(session, template_id)
    return outcomes.report(session, template_id)


@router.get("/{template_id}/outcomes.csv", response_class=Response)
def template_outcomes_csv(template_id: TemplateId, session: ReaderDep) -> Response:
    """The funnel as CSV (UTF-8 with BOM): all variants together, then each variant."""
    templates_service.get_template(session, template_id)
    body = outcomes.funnel_csv(outcomes.report(session, template_id))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="sop-{template_id}-funnel.csv"'},
    )


@router.post("/{template_id}/forecast", response_model=forecasting.Forecast)
def template_forecast(
    template_id: TemplateId, session: ReaderDep, clock: ClockDep, settings: SettingsDep
) -> forecasting.Forecast:
    """What publishing the draft now would do, computed without writing: who
    enrolls, deliveries per day and step for 30 days (quiet hours, caps and other
    live SOPs applied), who is skipped or capped and why, the first 100 rows."""
    return forecasting.forecast(
        session,
        template_id,
        clock.now(),
        workspace=policies.WorkspaceDefaults.from_settings(settings),
    )
