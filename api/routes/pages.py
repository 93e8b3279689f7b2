"""A small live status page: what is scheduled, what went out. The full operator
UI builds on the same service functions."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from api.deps import SessionDep, SettingsDep
from channels.models import MockMessage
from scheduler.models import Delivery
from sop_templates import service as templates_service

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))

STATUS_ZH = {
    "scheduled": "待发送",
    "claimed": "已领取",
    "sending": "发送中",
    "sent": "已发送",
    "failed": "失败",
    "skipped": "已跳过",
    "cancelled": "已取消",
    "missed": "已错过",
    "unknown": "结果未知",
    "draft": "草稿",
    "pending_approval": "待审批",
    "published": "已发布",
    "paused": "已暂停",
    "archived": "已归档",
}


@router.get("/", response_class=HTMLResponse)
def status_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    zone = ZoneInfo(settings.default_timezone)
    counts: dict[int, dict[str, int]] = {}
    for template_id, status, n in session.execute(
        select(Delivery.template_id, Delivery.status, func.count()).group_by(
            Delivery.template_id, Delivery.status
        )
    ).all():
        counts.setdefault(template_id, {})[status] = n
    upcoming = (
        session.execute(
            select(Delivery)
            .where(Delivery.status == "scheduled")
            .order_by(Delivery.run_at)
            .limit(10)
        )
        .scalars()
        .all()
    )
    messages = (
        session.execute(
            select(MockMessage).order_by(MockMessage.id.desc()).limit(30)  # type: ignore[union-attr]
        )
        .scalars()
        .all()
    )
    return templates.TemplateResponse(
        request,
        "status.html",
        {
            "templates": templates_service.list_templates(session),
            "counts": counts,
            "upcoming": upcoming,
            "messages": messages,
            "zone": zone,
            "zh": STATUS_ZH,
        },
    )
