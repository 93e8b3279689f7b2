"""Read-only pages for analysts, in the operator UI: the delivery log (发送记录)
with shareable filter URLs and CSV download, and the template report (SOP 数据报表)
with a funnel across touchpoints and a sends-per-hour chart drawn as server-side
SVG (no chart script, no CDN)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
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
from scheduler.analytics import log, stats
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


@router.get("/report", response_class=HTMLResponse)
def report_index(request: Request, session: ReaderDep, clock: ClockDep) -> HTMLResponse:
    return render(
        request,
        "ui/report.html",
        {"overview": stats.overview(session, now=clock.now()), "report": None},
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
            "funnel": funnel_chart(report.touchpoints, gettext) if report else None,
            "chart": series_chart(report.series, report.interval, gettext) if report else None,
            "log_base": log_base,
        },
        status_code=422 if error else 200,
    )


# -- SVG geometry (the template only draws what is computed here) ----------------------


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass
class Label:
    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[Label]
    grid: list[tuple[float, str]]  # (y, value label)


def funnel_chart(
    touchpoints: Sequence[stats.TouchpointStats], gettext: Callable[[str], str]
) -> Chart:
    """One row per touchpoint: planned deliveries (light) and sent (dark); the
    tooltips in the language of ``gettext``."""
    width, label_w, row_h, bar_h = 760, 210, 34, 22
    widest = max((t.counts.deliveries for t in touchpoints), default=0) or 1
    scale = (width - label_w - 150) / widest
    bars, labels = [], []
    planned_label, sent_label = gettext(N_("Planned")), gettext(STATUS_LABELS["sent"])
    for i, t in enumerate(touchpoints):
        y = 8 + i * row_h
        name = f"v{t.version or '?'} · {t.name or t.touchpoint_id}"
        labels.append(Label(label_w - 8, y + bar_h * 0.72, name, "end"))
        planned, sent = t.counts.deliveries, t.counts.sent
        bars.append(
            Bar(label_w, y, planned * scale, bar_h, "planned", f"{name}: {planned_label} {planned}")
        )
        bars.append(Bar(label_w, y, sent * scale, bar_h, "sent", f"{name}: {sent_label} {sent}"))
        rate = "—" if t.counts.send_rate is None else f"{t.counts.send_rate:.1%}"
        labels.append(
            Label(label_w + planned * scale + 6, y + bar_h * 0.72, f"{sent} / {planned} · {rate}")
        )
    return Chart(width, 16 + len(touchpoints) * row_h, bars, labels, [])


SERIES_PARTS = (  # (SeriesPoint attribute, CSS class, label)
    ("sent", "sent", STATUS_LABELS["sent"]),
    ("failed", "failed", STATUS_LABELS["failed"]),
    ("unknown", "failed", STATUS_LABELS["unknown"]),
    ("missed", "missed", STATUS_LABELS["missed"]),
    ("skipped", "missed", STATUS_LABELS["skipped"]),
    ("cancelled", "missed", STATUS_LABELS["cancelled"]),
    ("pending", "pending", N_("Pending")),
)


def series_chart(
    points: Sequence[stats.SeriesPoint], interval: str, gettext: Callable[[str], str]
) -> Chart:
    """Stacked bars per hour (or day) of due time: sent, failed, not sent, pending;
    the tooltips in the language of ``gettext``."""
    width, height, left, bottom, top = 760, 240, 44, 36, 10
    plot_w, plot_h = width - left - 8, height - top - bottom
    peak = max((p.deliveries for p in points), default=0)
    step = _nice_step(peak)
    ceiling = max(step * math.ceil(peak / step), step) if peak else 1
    slot = plot_w / max(len(points), 1)
    bars, labels = [], []
    every = max(1, math.ceil(len(points) / 8))
    fmt = "%m-%d %H:00" if interval == "hour" else "%m-%d"
    for i, p in enumerate(points):
        x = left + i * slot
        y = top + plot_h
        when = p.start.strftime("%Y-%m-%d %H:%M" if interval == "hour" else "%Y-%m-%d")
        for attr, css, label in SERIES_PARTS:
            n = getattr(p, attr)
            if n:
                h = n / ceiling * plot_h
                y -= h
                title = f"{when} {gettext(label)} {n}"
                bars.append(Bar(x + slot * 0.1, y, max(slot * 0.8, 1), h, css, title))
        if i % every == 0:
            # centred under its bar, but kept inside the chart (about 72px wide)
            centre = min(x + slot / 2, width - 38)
            labels.append(Label(centre, height - bottom + 16, p.start.strftime(fmt), "middle"))
    grid = [
        (top + plot_h - v / ceiling * plot_h, str(v)) for v in range(0, int(ceiling) + 1, step or 1)
    ]
    return Chart(width, height, bars, labels, grid)


def _nice_step(peak: int) -> int:
    if peak <= 4:
        return 1
    raw = peak / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    return int(10 * magnitude)
