"""Welcomes jump the queue: a WelcomeCode lapses 20 s after the add event, so a
welcome delivery is claimed ahead of a due backlog (``transitions.claim``, its
own partial index) instead of waiting behind it for its fallback.

Runs on SQLite, and on PostgreSQL when SOPBOT_TEST_DATABASE_URL says so (the
claim's SQL differs: SKIP LOCKED and a materialized CTE there)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, insert, select
from test_wecom_welcome import welcome_spec
from wecom_kit import CHANNEL, CONFIG, befriend, create_and_publish

from audiences.models import Contact
from channels.registry import ensure_instance
from channels.wecom_fake import FakeWeCom
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery
from scheduler.runtime import SchedulerRuntime
from sop_templates import service as templates_service
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
BACKLOG = 5_000
BATCH = 500


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    clock.set(T0)
    return FakeWeCom(clock)


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    settings = settings.model_copy(update={"claim_batch_size": BATCH, "dispatch_pipeline": 1})
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def seed_backlog(engine, n: int, due: datetime) -> None:
    """``n`` ordinary deliveries on the mock channel, all due at ``due``."""
    with session_scope(engine) as session:
        spec = {
            "name": "积压",
            "target": "contact",
            "timezone": "Asia/Shanghai",
            "anchor": "join",
            "channel": "mock",
            "touchpoints": [{"name": "hello", "timing": "+0m", "content": "你好"}],
        }
        template = templates_service.create_template(session, spec, due)
        templates_service.freeze_draft(session, template.id, due)  # type: ignore[arg-type]
        template_id = template.id
    contacts = Contact.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            insert(contacts),
            [
                {
                    "external_id": f"backlog_{i:05d}",
                    "name": f"客户{i}",
                    "joined_at": due,
                    "status": "active",
                    "attributes": {},
                }
                for i in range(n)
            ],
        )
        ids = list(
            conn.execute(
                select(contacts.c.id).where(contacts.c.external_id.like("backlog%"))
            ).scalars()
        )
    with session_scope(engine) as session:
        template = templates_service.get_template(session, template_id)  # type: ignore[arg-type]
        scheduler_service.enroll(session, template, [(i, due) for i in ids], due)


async def test_a_welcome_is_claimed_ahead_of_a_due_backlog_and_sent_once(
    engine, clock, fake, wecom_runtime
):
    create_and_publish(engine, welcome_spec("task"), T0)
    seed_backlog(engine, BACKLOG, T0 - timedelta(minutes=5))
    befriend(engine, fake, T0, "staff_li", "wm_new", name="新朋友")
    clock.advance(seconds=1)
    wecom_runtime.apply_inbox_now()
    with session_scope(engine) as session:
        welcome = session.execute(select(Delivery).where(Delivery.mode == "welcome")).scalar_one()
        due_before = session.execute(
            select(func.count()).where(Delivery.mode == "send", Delivery.run_at < welcome.run_at)
        ).scalar_one()
    assert due_before == BACKLOG  # in plain run_at order it would come last, 10 batches on

    first = await wecom_runtime.dispatcher.run_once(max_batches=1)

    # The batch is as large as the pace allows (leases.Pace starts small), far
    # short of the backlog; the welcome is in it.
    assert 1 < first.claimed <= BATCH
    assert fake.calls["externalcontact/send_welcome_msg"] == 1
    [greeting] = fake.welcomes
    assert greeting["external_userid"] == "wm_new"
    with session_scope(engine) as session:
        row = session.get(Delivery, welcome.id)
        assert row is not None and row.status == "sent"
        assert "send_welcome_msg" in (row.reason or "")
        sent = session.execute(
            select(func.count()).where(Delivery.mode == "send", Delivery.status == "sent")
        ).scalar_one()
    assert sent == first.claimed - 1  # the rest of the first batch is the backlog, oldest first

    # The backlog drains as before; the welcome is not sent again and no
    # fallback task is created.
    rest = await wecom_runtime.dispatcher.run_once()
    assert rest.claimed == BACKLOG - (first.claimed - 1)
    assert fake.calls["externalcontact/send_welcome_msg"] == 1
    assert "externalcontact/add_msg_template" not in fake.calls
    with session_scope(engine) as session:
        statuses = dict(
            session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )
    assert statuses == {"sent": BACKLOG + 1}


async def test_a_paused_sops_welcome_does_not_jump_the_queue(engine, clock, fake, wecom_runtime):
    from sop_templates.models import SopTemplate, TemplateStatus

    template_id = create_and_publish(engine, welcome_spec("task"), T0)
    seed_backlog(engine, 300, T0 - timedelta(minutes=5))
    befriend(engine, fake, T0, "staff_li", "wm_new")
    clock.advance(seconds=1)
    wecom_runtime.apply_inbox_now()
    with session_scope(engine) as session:
        template = session.get(SopTemplate, template_id)
        assert template is not None
        template.status = TemplateStatus.PAUSED
        session.add(template)

    stats = await wecom_runtime.dispatcher.run_once()

    assert stats.claimed == 300 and stats.sent == 300
    assert "externalcontact/send_welcome_msg" not in fake.calls
    with session_scope(engine) as session:
        welcome = session.execute(select(Delivery).where(Delivery.mode == "welcome")).scalar_one()
    assert welcome.status == "scheduled"
