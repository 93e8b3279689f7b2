"""Remind mode through the dispatcher: each delivery becomes a task in its
staff member's inbox, and each staff member gets one digest per window,
however many tasks; nudges before deadlines; quiet hours; exactly once."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from factories import deliveries
from sqlalchemy import select
from sqlmodel import Session
from staff_world import STAFF, T0, FakeWeCom, add_wecom, build

from scheduler.runtime import SchedulerRuntime
from scheduler.staff import digest, links
from scheduler.staff import service as staff_service
from scheduler.staff.models import StaffDigest, StaffTask
from sopbot.db import session_scope


@pytest.fixture
def wecom(engine) -> FakeWeCom:
    add_wecom(engine)
    return FakeWeCom()


@pytest.fixture
async def rt(engine, clock, settings, wecom):
    settings.render_budget_ms = 10_000  # a shared, busy machine must not fail a render
    http = httpx.AsyncClient(transport=httpx.MockTransport(wecom))
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def _tasks(engine) -> list[StaffTask]:
    with Session(engine) as session:
        return list(session.execute(select(StaffTask)).scalars())


def _digests(engine) -> list[StaffDigest]:
    with Session(engine) as session:
        return list(session.execute(select(StaffDigest).order_by(StaffDigest.id)).scalars())


async def test_three_staff_with_thirty_customers_get_three_digests_not_ninety(
    engine, clock, settings, wecom, rt
):
    clock.set(T0)
    world = build(engine)
    await rt.dispatch_tick()
    rows = deliveries(engine)
    assert len(rows) == 90
    assert {r.status for r in rows} == {"awaiting_staff"}
    assert wecom.app_messages == []  # nothing per delivery
    assert rows[0].rendered[0]["text"].endswith("您好，我是您的专属顾问")
    tasks = _tasks(engine)
    assert len(tasks) == 90
    assert {t.deadline_at for t in tasks} == {T0 + timedelta(hours=6)}  # the +0m grace
    per_account = {a: sum(t.account_id == world.accounts[a] for t in tasks) for a in STAFF}
    assert per_account == {"staff_a": 30, "staff_b": 30, "staff_c": 30}

    stats = await rt.staff_tick()
    assert (stats.digests, stats.nudges, stats.failed) == (3, 0, 0)
    assert len(wecom.app_messages) == 3
    for staff in STAFF:
        (text,) = wecom.to(staff)
        assert text.startswith("【SOP 待执行】今天有 30 个客户 SOP 待执行。")
        url = text.split("打开任务列表：", 1)[1]
        token = url.split("?t=", 1)[1]
        with session_scope(engine) as session:
            key = links.workspace_key(session, settings, clock.now())
        assert links.verify(key, token, clock.now()).account_id == world.accounts[staff]

    # the same window, and the next one: nothing new, nothing sent again
    clock.advance(minutes=10)
    assert (await rt.staff_tick()).digests == 0
    clock.advance(minutes=settings.staff_digest_minutes)
    assert (await rt.staff_tick()).digests == 0
    assert len(wecom.app_messages) == 3
    assert [d.state for d in _digests(engine)] == ["sent"] * 3


async def test_a_second_process_in_the_same_window_sends_nothing_twice(
    engine, clock, settings, wecom, rt
):
    """Two checks racing on one window: the unique (account, window, kind)
    row lets only one of them send; tasks arriving later in the window wait
    for the next window's digest."""
    clock.set(T0)
    build(engine, per_staff=3)
    await rt.dispatch_tick()
    first = digest._plan(engine, clock.now(), settings)
    assert len(first) == 3
    with session_scope(engine) as session:  # the other process's view: tasks new again
        session.execute(StaffTask.__table__.update().values(announced_at=None))
    assert digest._plan(engine, clock.now(), settings) == []
    clock.advance(minutes=settings.staff_digest_minutes)
    assert len(digest._plan(engine, clock.now(), settings)) == 3


async def test_quiet_hours_hold_the_digest_until_they_end(engine, clock, settings, wecom, rt):
    settings.quiet_hours = "09:00-11:00"  # Shanghai; T0 is 10:00 there
    clock.set(T0)
    build(engine, per_staff=2)
    await rt.dispatch_tick()
    assert (await rt.staff_tick()).quiet
    assert wecom.app_messages == []
    clock.set(T0 + timedelta(hours=1, minutes=1))
    assert (await rt.staff_tick()).digests == 3


async def test_a_nudge_before_the_deadline_and_missed_after_it(engine, clock, settings, wecom, rt):
    clock.set(T0)
    world = build(engine, per_staff=2)
    await rt.dispatch_tick()
    await rt.staff_tick()
    assert len(wecom.app_messages) == 3
    clock.set(T0 + timedelta(hours=6) - timedelta(minutes=settings.staff_nudge_minutes - 1))
    stats = await rt.staff_tick()
    assert stats.nudges == 3
    assert wecom.to("staff_a")[-1].startswith("【SOP 即将截止】有 2 个客户 SOP 将在 30 分钟内截止")
    assert (await rt.staff_tick()).nudges == 0  # once
    clock.set(T0 + timedelta(hours=6, seconds=1))
    assert (await rt.staff_tick()).expired == 6
    rows = deliveries(engine)
    assert {r.status for r in rows} == {"missed"}
    assert {t.on_time for t in _tasks(engine)} == {False}
    assert world.accounts


async def test_a_failed_digest_is_announced_again_in_the_next_window(
    engine, clock, settings, wecom, rt
):
    clock.set(T0)
    build(engine, per_staff=1)
    await rt.dispatch_tick()
    wecom.fail = True
    stats = await rt.staff_tick()
    assert (stats.digests, stats.failed) == (0, 3)
    assert {d.state for d in _digests(engine)} == {"failed"}
    wecom.fail = False
    clock.advance(minutes=settings.staff_digest_minutes)
    assert (await rt.staff_tick()).digests == 3


async def test_postponed_tasks_come_back_in_a_later_digest(engine, clock, settings, wecom, rt):
    clock.set(T0)
    world = build(engine, per_staff=3)
    await rt.dispatch_tick()
    await rt.staff_tick()
    a = world.accounts["staff_a"]
    mine = [t.delivery_id for t in _tasks(engine) if t.account_id == a]
    with session_scope(engine) as session:
        n = staff_service.postpone(session, a, mine[:1], T0 + timedelta(hours=2), clock.now())
    assert n == 1
    clock.set(T0 + timedelta(hours=1))
    assert (await rt.staff_tick()).digests == 0
    clock.set(T0 + timedelta(hours=2))
    assert (await rt.staff_tick()).digests == 1
    assert wecom.to("staff_a")[-1].startswith(
        "【SOP 待执行】今天有 3 个客户 SOP 待执行（新增 1 个）"
    )
