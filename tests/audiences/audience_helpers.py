"""Small helpers shared by the audience tests (no framework)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from audiences import service as audiences_service
from audiences.models import Contact, GroupChat, InboxEvent
from scheduler.flows import changes, lifecycle
from scheduler.outbox.models import Enrollment
from sop_templates import service as templates_service
from sopbot.db import session_scope


def register_account(engine: Engine, external_id: str, name: str = "") -> None:
    with session_scope(engine) as session:
        audiences_service.ensure_account(session, external_id, name)


def send_events(engine: Engine, now: datetime, events: list[dict[str, Any]] | dict[str, Any]):
    """What ``POST /api/events`` does, without HTTP: one transaction."""
    items = events if isinstance(events, list) else [events]
    with session_scope(engine) as session:
        return changes.apply_events(session, items, now)


def create_and_publish(engine: Engine, spec: dict[str, Any], now: datetime):
    """Create a template and publish it the way the API does (enrolling the segment)."""
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, now)
        result = lifecycle.publish(session, template.id, now, ACTOR)  # type: ignore[arg-type]
        return template.id, result


def _no_audit(action: str, template_id: int, summary: str, detail: Any) -> None:
    pass


# the lifecycle as a workspace without approval, whose audit log is not under test
ACTOR = lifecycle.Actor(require_approval=False, audit=_no_audit)


def enrollments(engine: Engine, **where: Any) -> list[Enrollment]:
    with session_scope(engine) as session:
        stmt = select(Enrollment).order_by(Enrollment.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(Enrollment, key) == value)
        return list(session.execute(stmt).scalars())


def count(engine: Engine, model: Any) -> int:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def snapshot(engine: Engine) -> dict[str, int]:
    """Row counts of what events change: nothing may move after a rejected request."""
    from audiences.models import Account, TagAssignment
    from scheduler.outbox.models import Delivery

    return {
        m.__name__: count(engine, m)
        for m in (Account, Contact, GroupChat, TagAssignment, InboxEvent, Enrollment, Delivery)
    }


async def run_until(runtime, clock, until: datetime, step: timedelta) -> None:
    """Move the clock and run the scheduler's jobs (no real waiting)."""
    while clock.now() < until:
        clock.advance(step)
        await runtime.plan_tick()
        await runtime.dispatch_tick()
