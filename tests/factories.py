"""Small factory functions for tests (no framework)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from audiences.schemas import ContactIn, GroupIn
from channels.models import MockMessage
from scheduler.flows import changes
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery
from sop_templates import service as templates_service
from sopbot.db import session_scope


def new_friend_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "新好友 SOP",
        "target": "contact",
        "timezone": "Asia/Shanghai",
        "anchor": "join",
        "touchpoints": [
            {
                "name": "welcome",
                "timing": "+0m",
                "content": [
                    "{{ contact.name }}，欢迎！请填写问卷",
                    {"link": {"title": "问卷", "url": "https://example.com/q"}},
                ],
            },
            {"name": "coupon", "timing": "+3h", "content": ["{{ contact.name }}，送你一张优惠券"]},
            {
                "name": "reminder",
                "timing": "day 2 20:00",
                "content": ["{{ contact.name }}，别忘了今晚的活动"],
            },
        ],
    }
    spec.update(overrides)
    return spec


def store_menu_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "门店群每日菜单",
        "target": "group",
        "timezone": "Asia/Shanghai",
        "anchor": "join",
        "touchpoints": [
            {
                "name": "menu",
                "timing": "cron 0 11 * * *",
                "content": [{"image": "https://example.com/menu.png"}, "{{ group.name }} 今日菜单"],
            },
        ],
    }
    spec.update(overrides)
    return spec


def publish(engine: Engine, spec: dict[str, Any], now: datetime) -> int:
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, now)
        templates_service.freeze_draft(session, template.id, now)
        return template.id  # type: ignore[return-value]


def add_contact(engine: Engine, external_id: str, name: str, joined_at: datetime, **kw: Any) -> int:
    with session_scope(engine) as session:
        contact, _ = changes.upsert_contact(
            session,
            ContactIn(external_id=external_id, name=name, joined_at=joined_at, **kw),
            joined_at,
        )
        return contact.id  # type: ignore[return-value]


def add_group(engine: Engine, external_id: str, name: str, joined_at: datetime) -> int:
    with session_scope(engine) as session:
        group, _ = changes.upsert_group(
            session, GroupIn(external_id=external_id, name=name, joined_at=joined_at), joined_at
        )
        return group.id  # type: ignore[return-value]


def enroll(engine: Engine, template_id: int, targets: list[tuple[int, datetime]], now: datetime):
    with session_scope(engine) as session:
        template = templates_service.get_template(session, template_id)
        return scheduler_service.enroll(session, template, targets, now)


def deliveries(engine: Engine, **where: Any) -> list[Delivery]:
    with session_scope(engine) as session:
        stmt = select(Delivery).order_by(Delivery.due_at, Delivery.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(Delivery, key) == value)
        return list(session.execute(stmt).scalars())


def mock_sends(engine: Engine) -> list[MockMessage]:
    with session_scope(engine) as session:
        return list(session.execute(select(MockMessage).order_by(MockMessage.id)).scalars())


def sends_per_delivery(engine: Engine) -> dict[int, int]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(MockMessage.delivery_id, func.count()).group_by(MockMessage.delivery_id)
        ).all()
        return {d: n for d, n in rows}


def plan_when_due(engine: Engine) -> int:
    """The planner's rows of a fixed start's later touchpoints, written as each
    comes due (``fan_out.plan_each_when_due``)."""
    from scheduler.flows import fan_out

    with session_scope(engine) as session:
        return fan_out.plan_each_when_due(session)
