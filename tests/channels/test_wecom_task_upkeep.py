"""Open WeCom mass-send tasks against the fake WeCom: recalled when every
recipient left before the staff member confirmed, nudged within WeCom's limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from pydantic import ValidationError
from sqlmodel import Session, select
from wecom_kit import CHANNEL, CONFIG

from channels.models import ChannelTask
from channels.registry import ensure_instance
from channels.wecom import WeComConfig
from channels.wecom_fake import FakeWeCom
from scheduler.flows import changes, wecom_tasks
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", {**CONFIG, "remind_after_hours": [2, 6, 24, 48]})
    clock.set(T0)
    return FakeWeCom(clock)


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


async def start_task(engine, fake, runtime, customers: list[str]) -> list[int]:
    spec = new_friend_spec(
        name="活动",
        channel=CHANNEL,
        touchpoints=[{"name": "hello", "timing": "+0m", "content": "周末活动", "mode": "task"}],
    )
    template_id = publish(engine, spec, T0)
    ids = []
    for external in customers:
        fake.add_contact("staff_li", external)
        ids.append(add_contact(engine, external, external, T0, account="staff_li"))
    enroll(engine, template_id, [(i, T0) for i in ids], T0)
    await runtime.dispatch_tick()
    return ids


def task_row(engine) -> ChannelTask:
    with Session(engine) as session:
        return session.exec(select(ChannelTask)).one()


def friend_deleted(engine, now, external: str) -> None:
    with session_scope(engine) as session:
        changes.apply_events(
            session,
            [{"kind": "friend_deleted", "account": "staff_li", "external_id": external}],
            now,
        )


async def test_an_exit_before_confirmation_cancels_the_task(engine, clock, fake, wecom_runtime):
    await start_task(engine, fake, wecom_runtime, ["wm_1"])
    [task] = fake.tasks.values()
    clock.advance(minutes=30)
    friend_deleted(engine, clock.now(), "wm_1")

    stats = await wecom_tasks.upkeep(wecom_runtime)
    assert stats.cancelled == 1
    assert fake.calls["externalcontact/cancel_groupmsg_send"] == 1 and task.cancelled
    [row] = deliveries(engine)
    assert row.status == "cancelled"
    assert row.reason.startswith(f"mass-send task {task.msgid} recalled before staff staff_li")
    assert task_row(engine).state == "cancelled"
    assert fake.confirm(task.msgid) == {"wm_1": 0}  # the staff member can no longer send it
    assert (await wecom_tasks.upkeep(wecom_runtime)).cancelled == 0  # once


async def test_a_partial_exit_is_recorded_as_not_recallable(engine, clock, fake, wecom_runtime):
    await start_task(engine, fake, wecom_runtime, ["wm_1", "wm_2"])
    friend_deleted(engine, clock.now(), "wm_1")
    stats = await wecom_tasks.upkeep(wecom_runtime)
    assert (stats.cancelled, stats.not_recallable) == (0, 1)
    assert "cancel_groupmsg_send" not in str(fake.calls)
    assert task_row(engine).last_error == (
        "1 of 2 recipients left the SOP; WeCom cannot recall a task for part of its customers"
    )
    assert {r.status for r in deliveries(engine)} == {"sent"}


async def test_unconfirmed_tasks_are_nudged_on_schedule(engine, clock, fake, wecom_runtime):
    await start_task(engine, fake, wecom_runtime, ["wm_1"])
    [task] = fake.tasks.values()
    reminded = []
    for hours in (1, 2, 3, 6, 30, 50):
        clock.set(T0 + timedelta(hours=hours))
        reminded.append((await wecom_tasks.upkeep(wecom_runtime)).reminded)
    assert reminded == [0, 1, 0, 1, 1, 1]  # at 2 h, 6 h, 24 h (sent late, at 30 h), 48 h
    assert sum(task.reminds.values()) == 4
    assert task_row(engine).reminders == 4


def test_the_nudge_schedule_stays_within_three_a_day():
    with pytest.raises(ValidationError, match="3 reminders a day"):
        WeComConfig.model_validate({**CONFIG, "remind_after_hours": [1, 2, 3, 4]})
    assert WeComConfig.model_validate({**CONFIG, "remind_after_hours": [1, 2, 3, 25]})
