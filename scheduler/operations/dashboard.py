"""The operator's dashboard: is it working? Sends today, failures, the backlog,
what goes out next, and each channel's health (its circuit breaker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from audiences.models import Contact, GroupChat
from channels import service as channels_service
from channels.breaker import CircuitBreakers
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.outbox.service import held_template_ids
from sop_templates.approval_models import ReviewState, TemplateReview
from sop_templates.models import SopTemplate, Touchpoint
from sopbot.settings import Settings

S = DeliveryStatus


@dataclass
class NextSend:
    delivery_id: int
    run_at: datetime
    template_id: int
    template_name: str
    touchpoint_name: str
    target_kind: str
    target_id: int
    target_name: str
    held: bool  # its template is paused


@dataclass
class ChannelHealth:
    name: str
    adapter: str
    enabled: bool
    breaker: str  # closed / open / half_open
    open_until: datetime | None
    last_error: str | None
    consecutive_failures: int


@dataclass
class Dashboard:
    day_start: datetime
    sent_today: int
    failed_today: int  # failed + unknown
    skipped_today: int  # skipped + missed
    backlog: int  # due now, not yet sent (templates running)
    held: int  # pending deliveries of paused templates
    oldest_due: datetime | None
    templates: dict[str, int]  # by status
    pending_approval: list[dict[str, Any]] = field(default_factory=list)
    next_sends: list[NextSend] = field(default_factory=list)
    channels: list[ChannelHealth] = field(default_factory=list)


def dashboard(
    session: Session, engine: Engine, settings: Settings, now: datetime, zone: ZoneInfo
) -> Dashboard:
    """Everything on the dashboard, read in one session."""
    local_day = now.astimezone(zone).date()
    day_start = datetime.combine(local_day, time(0), tzinfo=zone)
    held = held_template_ids(session)
    finished: dict[str, int] = dict(
        session.execute(
            select(Delivery.status, func.count())  # type: ignore[call-overload]
            .where(col(Delivery.finished_at) >= day_start)
            .group_by(Delivery.status)
        ).all()
    )
    sent_today = session.execute(
        select(func.count()).where(col(Delivery.sent_at) >= day_start)
    ).scalar_one()
    due = select(func.count(), func.min(Delivery.run_at)).where(
        col(Delivery.status) == S.SCHEDULED, col(Delivery.run_at) <= now
    )
    backlog, oldest = session.execute(
        due.where(col(Delivery.template_id).not_in(held)) if held else due
    ).one()
    held_count = (
        session.execute(
            select(func.count()).where(
                col(Delivery.status).in_(S.PENDING), col(Delivery.template_id).in_(held)
            )
        ).scalar_one()
        if held
        else 0
    )
    by_status: dict[str, int] = dict(
        session.execute(
            select(SopTemplate.status, func.count()).group_by(SopTemplate.status)  # type: ignore[call-overload]
        ).all()
    )
    pending = session.execute(
        select(SopTemplate.id, SopTemplate.name, TemplateReview.submitted_by_name)  # type: ignore[call-overload]
        .join(TemplateReview, col(TemplateReview.template_id) == SopTemplate.id)
        .where(TemplateReview.state == ReviewState.PENDING)
        .order_by(TemplateReview.submitted_at)
    ).all()
    return Dashboard(
        day_start=day_start,
        sent_today=sent_today,
        failed_today=finished.get(S.FAILED, 0) + finished.get(S.UNKNOWN, 0),
        skipped_today=finished.get(S.SKIPPED, 0) + finished.get(S.MISSED, 0),
        backlog=backlog,
        held=held_count,
        oldest_due=oldest,
        templates=by_status,
        pending_approval=[
            {"template_id": i, "name": n, "submitted_by": who} for i, n, who in pending
        ],
        next_sends=next_sends(session, now, held),
        channels=channel_health(session, engine, settings),
    )


def next_sends(session: Session, now: datetime, held: list[int], limit: int = 10) -> list[NextSend]:
    rows = session.execute(
        select(
            Delivery.id,  # type: ignore[call-overload]
            Delivery.run_at,
            Delivery.template_id,
            SopTemplate.name,
            Touchpoint.name,
            Delivery.target_kind,
            Delivery.target_id,
        )
        .join(SopTemplate, col(SopTemplate.id) == Delivery.template_id)
        .join(Touchpoint, col(Touchpoint.id) == Delivery.touchpoint_id)
        .where(col(Delivery.status) == S.SCHEDULED)
        .order_by(Delivery.run_at, Delivery.id)
        .limit(limit)
    ).all()
    names: dict[tuple[str, int], str] = {}
    for kind, model in (("contact", Contact), ("group", GroupChat)):
        ids = [r[6] for r in rows if r[5] == kind]
        if ids:
            for target_id, name, external_id in session.execute(
                select(col(model.id), col(model.name), col(model.external_id)).where(
                    col(model.id).in_(ids)
                )
            ).all():
                names[(kind, target_id)] = name or external_id
    return [
        NextSend(
            delivery_id=r[0],
            run_at=r[1],
            template_id=r[2],
            template_name=r[3],
            touchpoint_name=r[4],
            target_kind=r[5],
            target_id=r[6],
            target_name=names.get((r[5], r[6]), f"#{r[6]}"),
            held=r[2] in held,
        )
        for r in rows
    ]


def channel_health(session: Session, engine: Engine, settings: Settings) -> list[ChannelHealth]:
    instances = channels_service.list_instances(session)
    states = CircuitBreakers(engine, owner="dashboard").states(session, [i.name for i in instances])
    return [
        ChannelHealth(
            name=i.name,
            adapter=i.adapter,
            enabled=i.enabled,
            breaker=states[i.name]["state"],
            open_until=states[i.name]["open_until"],
            last_error=states[i.name]["last_error"],
            consecutive_failures=states[i.name]["consecutive_failures"],
        )
        for i in instances
    ]
