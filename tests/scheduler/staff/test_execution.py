"""Task-mode mass sends feed the execution view: a task the staff member
confirmed in time counts as done on time, one nobody confirmed as missed."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from sqlmodel import Session
from staff_world import T0

from scheduler.analytics import execution
from scheduler.outbox import transitions
from sopbot.db import session_scope


async def test_confirmed_and_unconfirmed_mass_sends_count_as_done_and_missed(
    engine, clock, settings, runtime
):
    settings.render_budget_ms = 10_000
    clock.set(T0)
    spec = new_friend_spec(
        name="群发任务",
        touchpoints=[{"name": "欢迎", "timing": "+0m", "content": "欢迎！", "mode": "task"}],
    )
    template_id = publish(engine, spec, T0)
    contacts = [
        add_contact(engine, f"wm_{i}", f"客户{i}", T0, account="staff_li") for i in range(3)
    ]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    await runtime.dispatch_tick()
    rows = deliveries(engine)
    assert {r.status for r in rows} == {"sent"}
    confirmed, late, expired = rows
    with session_scope(engine) as session:
        for row, at in ((confirmed, T0 + timedelta(minutes=5)), (late, T0 + timedelta(days=1))):
            transitions.confirm_task(
                session,
                row.provider_message_id,
                [{"b_id": row.id, "b_reason": "confirmed by staff staff_li", "b_sent_at": at}],
            )
        transitions.task_expired(
            session, expired.provider_message_id, [expired.id], "nobody confirmed", T0
        )
    with Session(engine) as session:
        report = execution.execution_report(
            session, execution.ExecutionFilter(), ZoneInfo("Asia/Shanghai")
        )
    (staff,) = report.by_account
    assert (staff.account_name, staff.assigned, staff.done, staff.done_on_time, staff.missed) == (
        "staff_li",
        3,
        2,
        1,
        1,
    )
    assert staff.completion_rate == 0.6667 and staff.on_time_rate == 0.3333
    (step,) = report.by_step
    assert (step.template_name, step.step) == ("群发任务", "欢迎")
    day = T0.astimezone(ZoneInfo("Asia/Shanghai")).date()
    with Session(engine) as session:
        other_day = execution.execution_report(
            session,
            execution.ExecutionFilter(date_from=day + timedelta(days=1)),
            ZoneInfo("Asia/Shanghai"),
        )
    assert other_day.total.assigned == 0
