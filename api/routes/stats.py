"""Delivery statistics per template and touchpoint."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query

from api.deps import ClockDep, ReaderDep, SettingsDep
from api.routes.deliveries import IdQuery
from scheduler.analytics import stats
from scheduler.analytics.log import MAX_ID, parse_instant

router = APIRouter(prefix="/api/stats", tags=["stats"])


def stats_filter(
    template_id: int,
    zone: ZoneInfo,
    *,
    version_id: int | None = None,
    touchpoint_id: int | None = None,
    channel: str | None = None,
    due_from: str | None = None,
    due_to: str | None = None,
    interval: str = "auto",
) -> stats.StatsFilter:
    """Parse and check; raises InvalidLogQuery / InvalidStatsQuery naming the parameter."""
    return stats.StatsFilter(
        template_id=template_id,
        version_id=version_id,
        touchpoint_id=touchpoint_id,
        channel=channel or None,
        due_from=parse_instant(due_from, zone, "due_from"),
        due_to=parse_instant(due_to, zone, "due_to", end=True),
        interval=interval,
    )


@router.get("/templates", response_model=list[stats.TemplateSummary])
def templates_overview(session: ReaderDep, clock: ClockDep) -> list[stats.TemplateSummary]:
    """Every template with its delivery counts and send rate (archived days included)."""
    return stats.overview(session, now=clock.now())


@router.get("/templates/{template_id}", response_model=stats.TemplateStats)
def template_stats(
    template_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    session: ReaderDep,
    clock: ClockDep,
    settings: SettingsDep,
    version_id: IdQuery = None,
    touchpoint_id: IdQuery = None,
    channel: Annotated[str | None, Query(description="channel instance name")] = None,
    due_from: Annotated[
        str | None, Query(description="ISO 8601; without an offset in the workspace zone")
    ] = None,
    due_to: Annotated[str | None, Query(description="exclusive; a bare date: to its end")] = None,
    interval: Annotated[str, Query(description="auto, hour or day")] = "auto",
) -> stats.TemplateStats:
    """One template: enrolled, counts by status and reason, send rate, lateness
    p50/p95/p99, per touchpoint (the funnel), per channel instance and staff
    account, a time series by due time in the workspace zone, and exits."""
    zone = ZoneInfo(settings.default_timezone)
    flt = stats_filter(
        template_id,
        zone,
        version_id=version_id,
        touchpoint_id=touchpoint_id,
        channel=channel,
        due_from=due_from,
        due_to=due_to,
        interval=interval,
    )
    return stats.template_stats(session, flt, now=clock.now(), zone=zone)
