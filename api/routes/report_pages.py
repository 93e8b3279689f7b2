"""Read-only pages for analysts, in the operator UI: the delivery log (发送记录)
with shareable filter URLs and CSV download, and the template report (SOP 数据报表):
business figures first (people reached, send success rate, exits and
completions), touchpoints merged across versions by name (the per-version rows
on demand), and charts drawn by the vendored Apache ECharts from data computed
here (``api/static/report.js``; no CDN)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.deps import ClockDep, ReaderDep, SettingsDep, query_id
from api.i18n import N_
from api.routes import calendar_pages
from api.routes.deliveries import log_query_string, parse_log_filter
from api.routes.stats import stats_filter
from api.views import STATUS_LABELS, render, translator
from audiences.tables import ACCOUNTS
from channels import service as channels_service
from scheduler.analytics import execution, log, stats
from scheduler.analytics.log import InvalidLogQuery
from scheduler.outbox.models import DeliveryStatus
from sop_templates import service as templates_service
from sop_templates.models import TemplateVersion, Touchpoint

router = APIRouter(include_in_schema=False)
router.include_router(calendar_pages.router)  # 日历: under the same permission

PAGE_SIZES = (50, 100, 200, 500)


def _choices(session: Any, template_id: int | None) -> dict[str, Any]:
    """What the filter form offers: templates, their touchpoints, accounts, channels."""
    touchpoints: list[Any] = []
    if template_id is not None:
        tp, v = Touchpoint.__table__.c, TemplateVersion.__table__.c  # type: ignore[attr-defined]
        touchpoints = session.execute(
            select(tp.id, tp.name, v.version)
            .join_from(Touchpoint.__table__, TemplateVersion.__table__, v.id == tp.version_id)  # type: ignore[attr-defined]
            .where(tp.template_id == template_id)
            .order_by(v.version, tp.position)
        ).all()
    accounts = ACCOUNTS.c
    return {
        "templates": templates_service.list_templates(session),
        "touchpoints": touchpoints,
        "accounts": session.execute(select(accounts.id, accounts.name).order_by(accounts.id)).all(),
        "channels": channels_service.instance_names(session),
    }


@router.get("/log", response_class=HTMLResponse)
def log_page(
    request: Request, session: ReaderDep, settings: SettingsDep, clock: ClockDep
) -> HTMLResponse:
    zone = ZoneInfo(settings.default_timezone)
    params = request.query_params
    sort = params.get("sort") or "due_at"
    order = params.get("order") or "desc"
    limit = query_id(params, "limit") or 50
    limit = min(max(limit, 1), log.MAX_PAGE)
    error: InvalidLogQuery | None = None
    page = None
    flt = None
    try:
        flt = parse_log_filter(params.getlist, zone)
        page = log.list_page(
            session,
            flt,
            sort=sort,
            order=order,
            limit=limit,
            cursor=params.get("cursor") or None,
            now=clock.now(),
        )
    except InvalidLogQuery as exc:
        error = exc
    export_query = log_query_string(request, cursor=None, limit=None)
    return render(
        request,
        "ui/log.html",
        {
            "statuses": DeliveryStatus.ALL,
            "selected_statuses": set(flt.statuses) if flt else set(params.getlist("status")),
            "params": params,
            "sort": sort,
            "order": order,
            "limit": limit,
            "page_sizes": PAGE_SIZES,
            "error": error,
            "entries": page.entries if page else [],
            "next_url": f"/log?{log_query_string(request, cursor=page.next_cursor)}"
            if page and page.next_cursor
            else None,
            "first_url": f"/log?{log_query_string(request, cursor=None)}",
            "csv_url": f"/api/deliveries/export.csv?{export_query}",
            "ndjson_url": f"/api/deliveries/export.ndjson?{export_query}",
            **_choices(session, flt.template_id if flt else None),
        },
        status_code=422 if error else 200,
    )


def _execution(request: Request, session: Any, template_id: int | None) -> dict[str, Any]:
    """The staff execution section (scheduler.analytics.execution): its own
    date and staff filters (``exec_from``, ``exec_to``, ``exec_account``)."""
    params = request.query_params
    try:
        flt = execution.ExecutionFilter(
            date.fromisoformat(params["exec_from"]) if params.get("exec_from") else None,
            date.fromisoformat(params["exec_to"]) if params.get("exec_to") else None,
            template_id,
            query_id(params, "exec_account"),
        )
    except ValueError:
        flt = execution.ExecutionFilter(template_id=template_id)
    zone = ZoneInfo(request.app.state.settings.default_timezone)
    report = execution.execution_report(session, flt, zone)
    query = {
        k: v
        for k, v in {
            "template_id": template_id,
            "date_from": flt.date_from,
            "date_to": flt.date_to,
            "account_id": flt.account_id,
        }.items()
        if v is not None
    }
    return {
        "execution": report,
        "execution_filter": flt,
        "execution_csv": "/api/staff/execution.csv?" + urlencode(query),
        "staff_accounts": session.execute(
            select(ACCOUNTS.c.id, ACCOUNTS.c.name, ACCOUNTS.c.external_id).order_by(ACCOUNTS.c.id)
        ).all(),
    }


@router.get("/report", response_class=HTMLResponse)
def report_index(request: Request, session: ReaderDep, clock: ClockDep) -> HTMLResponse:
    return render(
        request,
        "ui/report.html",
        {
            "overview": stats.overview(session, now=clock.now()),
            "report": None,
            **_execution(request, session, None),
        },
    )


@router.get("/report/{template_id}", response_class=HTMLResponse)
def report_page(
    template_id: Annotated[int, FastAPIPath(ge=1, le=log.MAX_ID)],
    request: Request,
    session: ReaderDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> HTMLResponse:
    zone = ZoneInfo(settings.default_timezone)
    params = request.query_params
    error: Exception | None = None
    report = None
    try:
        flt = stats_filter(
            template_id,
            zone,
            version_id=query_id(params, "version_id"),
            channel=params.get("channel") or None,
            due_from=params.get("due_from") or None,
            due_to=params.get("due_to") or None,
            interval=params.get("interval") or "auto",
        )
        report = stats.template_stats(session, flt, now=clock.now(), zone=zone)
    except (InvalidLogQuery, stats.InvalidStatsQuery) as exc:
        error = exc
    template = templates_service.get_template(session, template_id)
    versions = session.execute(
        select(TemplateVersion.id, TemplateVersion.version)  # type: ignore[call-overload]
        .where(TemplateVersion.template_id == template_id)
        .order_by(TemplateVersion.version)
    ).all()
    log_base = {"template_id": str(template_id)}
    for key in ("version_id", "channel", "due_from", "due_to"):
        if params.get(key):
            log_base[key] = params[key]
    gettext = translator(request)
    steps = merge_touchpoints(report.touchpoints) if report else []
    figures = (
        business_figures(session, report, template_id, query_id(params, "version_id"))
        if report
        else None
    )
    return render(
        request,
        "ui/report.html",
        {
            "overview": None,
            "template": template,
            "report": report,
            "error": error,
            "params": params,
            "versions": versions,
            "channels": channels_service.instance_names(session),
            "steps": steps,
            "figures": figures,
            "funnel": funnel_data(steps, gettext) if report else None,
            "chart": series_data(report.series, report.interval, gettext) if report else None,
            "log_base": log_base,
            **_execution(request, session, template_id),
        },
        status_code=422 if error else 200,
    )


# -- report figures and chart data (ECharts draws them: api/static/report.js) -----------


@dataclass
class MergedTouchpoint:
    """One step of the SOP across versions (matched by name, as moving contacts
    to a new version matches them): counts added up, the versions on demand."""

    name: str
    position: int
    counts: stats.Counts
    versions: list[stats.TouchpointStats]
    reasons: list[stats.ReasonCount]


_COUNT_FIELDS = (
    "deliveries",
    "due",
    "pending",
    "sent",
    "failed",
    "skipped",
    "cancelled",
    "missed",
    "unknown",
    "done",
    "skipped_by_staff",
)


def merge_touchpoints(rows: Sequence[stats.TouchpointStats]) -> list[MergedTouchpoint]:
    merged: dict[str, MergedTouchpoint] = {}
    for row in rows:
        name = row.name or str(row.touchpoint_id)
        step = merged.get(name)
        if step is None:
            step = merged[name] = MergedTouchpoint(
                name, row.position if row.position is not None else 999, stats.Counts(), [], []
            )
        step.versions.append(row)
        if row.position is not None:
            step.position = min(step.position, row.position)
        for field in _COUNT_FIELDS:
            setattr(step.counts, field, getattr(step.counts, field) + getattr(row.counts, field))
    for step in merged.values():
        due = step.counts.due
        step.counts.send_rate = step.counts.sent / due if due else None
        reasons: dict[tuple[str, str | None], int] = {}
        for row in step.versions:
            for r in row.reasons:
                reasons[(r.status, r.reason)] = reasons.get((r.status, r.reason), 0) + r.count
        step.reasons = [
            stats.ReasonCount(status, reason, n)
            for (status, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1])
        ]
        step.versions.sort(key=lambda r: r.version or 0)
    return sorted(merged.values(), key=lambda m: m.position)


def business_figures(
    session: Any, report: stats.TemplateStats, template_id: int, version_id: int | None
) -> dict[str, Any]:
    """触达人数 (people with at least one message sent), 发送成功率, 退出 / 完成."""
    from sqlalchemy import func

    from scheduler.outbox.models import Delivery

    reached = select(Delivery.target_kind, Delivery.target_id).where(  # type: ignore[call-overload]
        Delivery.template_id == template_id, Delivery.status == DeliveryStatus.SENT
    )
    if version_id is not None:
        reached = reached.where(Delivery.version_id == version_id)
    people = session.execute(
        select(func.count()).select_from(reached.distinct().subquery())
    ).scalar()
    exits = {"exited": 0, "completed": 0}
    for x in report.exits:
        if x.status in exits:
            exits[x.status] += x.count
    return {
        "reached": int(people or 0),
        "enrolled": report.enrolled,
        "send_rate": report.totals.send_rate,
        "exited": exits["exited"],
        "completed": exits["completed"],
    }


def funnel_data(steps: Sequence[MergedTouchpoint], gettext: Callable[[str], str]) -> dict[str, Any]:
    """A horizontal bar per step: planned and sent, labelled ``sent / planned · rate``."""
    return {
        "kind": "funnel",
        "categories": [s.name for s in steps],
        "series": [
            {
                "name": gettext(N_("Planned")),
                "css": "planned",
                "data": [s.counts.deliveries for s in steps],
            },
            {
                "name": gettext(STATUS_LABELS["sent"]),
                "css": "sent",
                "data": [s.counts.sent for s in steps],
            },
        ],
        "labels": [
            f"{s.counts.sent} / {s.counts.deliveries} · "
            + ("—" if s.counts.send_rate is None else f"{s.counts.send_rate:.1%}")
            for s in steps
        ],
    }


SERIES_PARTS = (  # (label, css, SeriesPoint attributes added up)
    (STATUS_LABELS["sent"], "sent", ("sent",)),
    (N_("Failed / unknown outcome"), "failed", ("failed", "unknown")),
    (N_("Missed / skipped / cancelled"), "missed", ("missed", "skipped", "cancelled")),
    (STATUS_LABELS["done"], "sent", ("done",)),
    (STATUS_LABELS["skipped_by_staff"], "missed", ("skipped_by_staff",)),
    (N_("Pending"), "pending", ("pending",)),
)


def series_data(
    points: Sequence[stats.SeriesPoint], interval: str, gettext: Callable[[str], str]
) -> dict[str, Any]:
    """Stacked bars per hour (or day) of due time: sent, failed, not sent, pending."""
    fmt = "%m-%d %H:00" if interval == "hour" else "%m-%d"
    return {
        "kind": "stack",
        "categories": [p.start.strftime(fmt) for p in points],
        "series": [
            {
                "name": gettext(label),
                "css": css,
                "data": [sum(getattr(p, a) for a in attrs) for p in points],
            }
            for label, css, attrs in SERIES_PARTS
        ],
    }
