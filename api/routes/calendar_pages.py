"""The send calendar (日历): day, week and month views of every upcoming send
across live SOPs, cron occurrences not yet planned included (computed for
display, read-only, ``scheduler.analytics.calendar``), with counts per SOP and
touchpoint and a click through to the recipients."""

from __future__ import annotations

import calendar as month_calendar
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from api.deps import ClockDep, ReaderDep, SettingsDep
from api.views import locale_of, render
from audiences.models import Contact, GroupChat
from scheduler.analytics import calendar
from sop_templates import wording
from sop_templates.models import Touchpoint

router = APIRouter(include_in_schema=False)

VIEWS = ("day", "week", "month")


def window(view: str, day: date) -> tuple[date, date]:
    """The local days a view shows: ``[first, last)``; weeks start on Monday."""
    if view == "day":
        return day, day + timedelta(days=1)
    if view == "month":
        first = day.replace(day=1)
        return first, first + timedelta(days=month_calendar.monthrange(day.year, day.month)[1])
    first = day - timedelta(days=day.weekday())
    return first, first + timedelta(days=7)


def _step(view: str, day: date, forward: bool) -> date:
    sign = 1 if forward else -1
    if view == "day":
        return day + timedelta(days=sign)
    if view == "week":
        return day + timedelta(days=7 * sign)
    month = day.month - 1 + sign
    return date(day.year + month // 12, month % 12 + 1, 1)


def _utc(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


@router.get("/calendar", response_class=HTMLResponse)
def calendar_page(
    request: Request,
    session: ReaderDep,
    settings: SettingsDep,
    clock: ClockDep,
    view: str = "week",
    day: str = "",
) -> HTMLResponse:
    zone = ZoneInfo(settings.default_timezone)
    now = clock.now()
    today = now.astimezone(zone).date()
    view = view if view in VIEWS else "week"
    try:
        shown = date.fromisoformat(day) if day else today
    except ValueError:
        shown = today
    first, last = window(view, shown)
    sends = calendar.upcoming(session, _utc(first, zone), _utc(last, zone), now)
    locale = locale_of(request)
    days = calendar.by_day(sends, zone)
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for send in sends:
        row = totals.setdefault(
            (send.template_name, send.touchpoint_name),
            {
                "template": send.template_name,
                "touchpoint": send.touchpoint_name,
                "sends": 0,
                "recipients": 0,
                "kind": send.target_kind,
            },
        )
        row["sends"] += 1
        row["recipients"] += send.count
    month_weeks: list[list[date | None]] = []
    if view == "month":
        month_weeks = [
            [d if d.month == first.month else None for d in week]
            for week in month_calendar.Calendar(firstweekday=0).monthdatescalendar(
                first.year, first.month
            )
        ]
    return render(
        request,
        "ui/calendar.html",
        {
            "view": view,
            "shown": shown,
            "today": today,
            "first": first,
            "last": last - timedelta(days=1),
            "days": days,
            "sends": sends,
            "totals": sorted(totals.values(), key=lambda r: (r["template"], r["touchpoint"])),
            "month_weeks": month_weeks,
            "prev_day": _step(view, shown, False),
            "next_day": _step(view, shown, True),
            "cal_zone": zone,
            "now_local": now.astimezone(zone).replace(tzinfo=None),
            "when_text": lambda at: wording.when_text(
                at.astimezone(zone).replace(tzinfo=None),
                now.astimezone(zone).replace(tzinfo=None),
                locale,
            ),
            "recipients_text": lambda n, kind: wording.recipients_text(n, kind, locale),
            "day_text": lambda d: wording.day_text(d, today, locale),
        },
    )


@router.get("/calendar/recipients", response_class=HTMLResponse)
def calendar_recipients(
    request: Request,
    session: ReaderDep,
    settings: SettingsDep,
    clock: ClockDep,
    touchpoint_id: int,
    at: str,
) -> HTMLResponse:
    """Who one send of the calendar goes to."""
    zone = ZoneInfo(settings.default_timezone)
    try:
        instant = datetime.fromisoformat(at)
    except ValueError:
        instant = clock.now()
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=zone)
    tp = session.get(Touchpoint, touchpoint_id)
    pairs = calendar.recipients(session, touchpoint_id, instant) if tp else []
    return render(
        request,
        "ui/calendar_recipients.html",
        {
            "touchpoint": tp,
            "at": instant,
            "cal_zone": zone,
            "targets": _targets(session, pairs),
        },
    )


def _targets(session: Session, pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    model: Any
    for kind, model, path in (("contact", Contact, "/contacts"), ("group", GroupChat, "/groups")):
        ids = [i for k, i in pairs if k == kind]
        if not ids:
            continue
        rows = session.exec(select(model).where(col(model.id).in_(ids))).all()
        out.extend(
            {
                "kind": kind,
                "name": r.name or r.external_id,
                "external_id": r.external_id,
                "href": f"{path}/{r.id}",
            }
            for r in rows
        )
    return sorted(out, key=lambda t: t["name"])


def next_send_lines(
    session: Session,
    now: datetime,
    zone: ZoneInfo,
    locale: str,
    sends: dict[int, calendar.CalendarSend] | None = None,
) -> dict[int, str]:
    """``下次发送：明天 11:00，4 个群`` for each live template with a send ahead
    (``sends``: those already read, else read now)."""
    local_now = now.astimezone(zone).replace(tzinfo=None)
    if sends is None:
        sends = calendar.next_sends(session, now)
    return {
        template_id: wording.next_send_text(
            send.at.astimezone(zone).replace(tzinfo=None),
            local_now,
            send.count,
            send.target_kind,
            locale,
        )
        for template_id, send in sends.items()
        if send.at >= now  # a snapshot a few seconds old may hold one just sent
    }
