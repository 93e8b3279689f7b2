"""The three SOP scenarios, end to end through enrollment and dispatch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from factories import (
    add_contact,
    add_group,
    deliveries,
    enroll,
    mock_sends,
    new_friend_spec,
    publish,
    sends_per_delivery,
    store_menu_spec,
)

SH = ZoneInfo("Asia/Shanghai")


async def drain(runtime, clock, until: datetime, step: timedelta = timedelta(minutes=1)) -> None:
    """Run the scheduler's jobs as the clock moves on (no real waiting)."""
    while clock.now() < until:
        clock.advance(step)
        await runtime.plan_tick()
        await runtime.dispatch_tick()


async def test_new_friend_gets_three_touchpoints_at_the_right_instants(engine, clock, runtime):
    joined = datetime(2027, 3, 1, 21, 30, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, new_friend_spec(), clock.now())
    contact_id = add_contact(engine, "wm_zhang", "张三", joined)

    result = enroll(engine, template_id, [(contact_id, joined)], clock.now())
    assert result.enrolled == 1 and result.deliveries == 3

    rows = deliveries(engine)
    assert [r.due_at for r in rows] == [
        datetime(2027, 3, 1, 13, 30, tzinfo=UTC),  # +0: 21:30 Shanghai
        datetime(2027, 3, 1, 16, 30, tzinfo=UTC),  # +3h: 00:30 next day Shanghai
        datetime(2027, 3, 2, 12, 0, tzinfo=UTC),  # day 2 20:00 Shanghai
    ]

    # minute ticks until 1.5 h past the last touchpoint (day 2, 20:00)
    await drain(runtime, clock, joined + timedelta(days=1))
    rows = deliveries(engine)
    assert [r.status for r in rows] == ["sent", "sent", "sent"]
    for row in rows:
        assert row.sent_at is not None and row.sent_at - row.due_at <= timedelta(minutes=1)
        assert row.provider_message_id == f"mock-{row.id}"
        assert row.attempts == 1
    sends = mock_sends(engine)
    assert len(sends) == 3
    assert all("张三" in s.parts[0]["text"] for s in sends)
    assert sends[0].parts[1] == {
        "kind": "link",
        "title": "问卷",
        "url": "https://example.com/q",
        "description": None,
        "image_url": None,
    }


async def test_daily_cron_to_three_groups_for_five_days(engine, clock, runtime):
    start = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
    clock.set(start)
    template_id = publish(engine, store_menu_spec(), clock.now())
    groups = [add_group(engine, f"wr_{i}", f"门店{i}群", start) for i in range(3)]
    enroll(engine, template_id, [(g, start) for g in groups], clock.now())

    # half-hour ticks from 09:00 land on the 11:00 menu each day
    await drain(runtime, clock, start + timedelta(days=5), step=timedelta(minutes=30))

    rows = deliveries(engine)
    assert len(rows) == 15
    assert {r.status for r in rows} == {"sent"}
    assert sorted({r.due_at.astimezone(SH).strftime("%H:%M") for r in rows}) == ["11:00"]
    assert set(sends_per_delivery(engine).values()) == {1}
    assert len(mock_sends(engine)) == 15


async def test_scheduler_restart_mid_run_changes_nothing(engine, clock, runtime, settings):
    from scheduler.runtime import SchedulerRuntime

    start = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
    clock.set(start)
    template_id = publish(engine, store_menu_spec(), clock.now())
    groups = [add_group(engine, f"wr_{i}", f"门店{i}群", start) for i in range(3)]
    enroll(engine, template_id, [(g, start) for g in groups], clock.now())

    await drain(runtime, clock, start + timedelta(days=2, hours=5), step=timedelta(minutes=30))
    # a new process: fresh runtime, same database, catches up on start
    restarted = SchedulerRuntime(engine, clock, settings, http=runtime.http)
    await restarted.reap_tick()
    await restarted.plan_tick()
    await restarted.plan_tick()
    await drain(restarted, clock, start + timedelta(days=5), step=timedelta(minutes=30))

    assert len(deliveries(engine)) == 15
    assert len(mock_sends(engine)) == 15
    assert set(sends_per_delivery(engine).values()) == {1}


async def test_downtime_yields_missed_rows_not_a_flood(engine, clock, runtime):
    start = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
    clock.set(start)
    template_id = publish(engine, store_menu_spec(), clock.now())
    groups = [add_group(engine, f"wr_{i}", f"门店{i}群", start) for i in range(3)]
    enroll(engine, template_id, [(g, start) for g in groups], clock.now())
    await drain(runtime, clock, start + timedelta(hours=3), step=timedelta(minutes=5))  # day 1 sent

    # two days with no scheduler running at all: back at 14:00 on day 3, so
    # day 3's 11:00 menu is past its 1 h grace too
    clock.advance(timedelta(days=2, hours=2))
    await runtime.reap_tick()
    await runtime.plan_tick()
    await runtime.dispatch_tick()
    await drain(runtime, clock, start + timedelta(days=3, hours=3), step=timedelta(minutes=5))

    by_day: dict[str, list[str]] = {}
    for row in deliveries(engine):
        by_day.setdefault(row.due_at.astimezone(SH).date().isoformat(), []).append(row.status)
    assert by_day == {
        "2027-03-01": ["sent"] * 3,
        "2027-03-02": ["missed"] * 3,
        "2027-03-03": ["missed"] * 3,
        "2027-03-04": ["sent"] * 3,
    }
    missed = [r for r in deliveries(engine) if r.status == "missed"]
    assert all("no scheduler was running" in (r.reason or "") for r in missed)
    assert len(mock_sends(engine)) == 6


async def test_offset_touchpoint_goes_out_late_within_grace_and_missed_after(
    engine, clock, runtime
):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
    clock.set(joined)
    spec = new_friend_spec(
        touchpoints=[
            {"name": "a", "timing": "+1h", "content": "hi", "grace": "2h"},
            {"name": "b", "timing": "+2h", "content": "hi", "grace": "30m"},
        ]
    )
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_1", "李四", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())

    clock.set(joined + timedelta(hours=2, minutes=45))  # down until now
    await runtime.dispatch_tick()
    a, b = deliveries(engine)
    assert a.status == "sent" and a.sent_at - a.due_at == timedelta(hours=1, minutes=45)
    assert b.status == "missed" and "grace period" in b.reason
