"""Never twice, never silently lost: idempotent enrollment and fan-out,
concurrent ticks, crashes around the send, retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

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

from scheduler.outbox.dispatch import Dispatcher
from scheduler.runtime import SchedulerRuntime

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def _contacts(engine, n: int) -> list[int]:
    return [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(n)]


async def test_enrolling_twice_is_a_no_op(engine, clock, runtime):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    ids = _contacts(engine, 3)
    first = enroll(engine, template_id, [(i, T0) for i in ids], T0)
    clock.advance(minutes=5)
    second = enroll(engine, template_id, [(i, T0 + timedelta(hours=1)) for i in ids], clock.now())
    assert (first.enrolled, first.deliveries) == (3, 9)
    assert (second.enrolled, second.already, second.deliveries) == (0, 3, 0)
    assert len(deliveries(engine)) == 9
    await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 3  # the +0 welcome, once each


async def test_firing_the_same_cron_twice_sends_once(engine, clock, runtime, settings):
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))  # 10:00 Shanghai
    template_id = publish(engine, store_menu_spec(), clock.now())
    groups = [add_group(engine, f"wr_{i}", f"群{i}", clock.now()) for i in range(3)]
    enroll(engine, template_id, [(g, clock.now()) for g in groups], clock.now())
    clock.set(datetime(2027, 3, 1, 3, 0, tzinfo=UTC))  # 11:00 Shanghai
    other = SchedulerRuntime(engine, clock, settings.model_copy(update={"worker_id": "w2"}))
    for rt in (runtime, other, runtime):
        await rt.plan_tick()
    await asyncio.gather(runtime.dispatch_tick(), other.dispatch_tick())
    assert len(deliveries(engine)) == 3
    assert set(sends_per_delivery(engine).values()) == {1}
    assert len(mock_sends(engine)) == 3


async def test_concurrent_dispatch_ticks_never_send_twice(engine, clock, settings):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    ids = _contacts(engine, 60)
    enroll(engine, template_id, [(i, T0) for i in ids], T0)
    small = settings.model_copy(update={"claim_batch_size": 7})
    workers = [
        SchedulerRuntime(engine, clock, small.model_copy(update={"worker_id": f"w{n}"}))
        for n in range(4)
    ]
    await asyncio.gather(*(w.dispatch_tick() for w in workers))
    rows = deliveries(engine, status="sent")
    assert len(rows) == 60  # every welcome, due now
    assert len(mock_sends(engine)) == 60
    assert set(sends_per_delivery(engine).values()) == {1}


async def test_crash_after_claim_before_sending_sends_exactly_once(
    engine, clock, runtime, settings
):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    ids = _contacts(engine, 2)
    enroll(engine, template_id, [(i, T0) for i in ids], T0)

    doomed = Dispatcher(engine, clock, runtime.channels, settings, worker_id="doomed")
    claimed = doomed.claim(100)  # the worker dies here: claimed, never marked sending
    assert len(claimed) == 2
    assert {r.status for r in deliveries(engine) if r.id in {c.id for c in claimed}} == {"claimed"}

    await runtime.dispatch_tick()  # lease still valid: nobody else may take them
    assert mock_sends(engine) == []
    clock.advance(seconds=settings.lease_seconds + 1)
    assert (await runtime.reap_tick())["released"] == 2
    await runtime.dispatch_tick()
    welcome = [r for r in deliveries(engine) if r.id in {c.id for c in claimed}]
    assert {r.status for r in welcome} == {"sent"}
    assert sends_per_delivery(engine) == {c.id: 1 for c in claimed}


async def test_crash_while_sending_becomes_unknown_and_is_not_resent(
    engine, clock, runtime, settings
):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    ids = _contacts(engine, 2)
    enroll(engine, template_id, [(i, T0) for i in ids], T0)

    doomed = Dispatcher(engine, clock, runtime.channels, settings, worker_id="doomed")
    claimed = doomed.claim(100)
    messages, outcomes = doomed._prepare(claimed)
    assert doomed._mark_sending(list(messages), outcomes) == {c.id for c in claimed}
    # ... the process is killed during the channel call

    clock.advance(seconds=settings.lease_seconds + 1)
    assert (await runtime.reap_tick())["unknown"] == 2
    clock.advance(hours=1)
    await runtime.dispatch_tick()
    for row in deliveries(engine):
        if row.id in {c.id for c in claimed}:
            assert row.status == "unknown"
            assert "outcome unknown, not resent" in row.reason
    assert mock_sends(engine) == []  # the mock never got the call; nobody resent it


async def test_retryable_errors_back_off_then_succeed(engine, clock, runtime):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    (contact,) = _contacts(engine, 1)
    enroll(engine, template_id, [(contact, T0)], T0)
    mock = runtime.channels.get("mock")
    mock.config.fail_mode = "retryable"

    await runtime.dispatch_tick()
    (welcome, *_rest) = deliveries(engine)
    assert welcome.status == "scheduled" and welcome.attempts == 1
    assert "retrying" in welcome.reason
    first_retry = welcome.run_at - T0
    assert timedelta(seconds=15) <= first_retry <= timedelta(seconds=30)

    clock.set(welcome.run_at)
    await runtime.dispatch_tick()
    welcome = deliveries(engine)[0]
    assert welcome.attempts == 2
    assert timedelta(seconds=30) <= welcome.run_at - clock.now() <= timedelta(seconds=60)

    mock.config.fail_mode = "none"
    clock.set(welcome.run_at)
    await runtime.dispatch_tick()
    welcome = deliveries(engine)[0]
    assert (welcome.status, welcome.attempts) == ("sent", 3)
    assert len(mock_sends(engine)) == 1


async def test_retries_stop_at_the_attempt_limit(engine, clock, runtime, settings):
    clock.set(T0)
    spec = new_friend_spec(
        touchpoints=[{"name": "a", "timing": "+0m", "content": "hi", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    (contact,) = _contacts(engine, 1)
    enroll(engine, template_id, [(contact, T0)], T0)
    runtime.channels.get("mock").config.fail_mode = "retryable"
    for _ in range(settings.max_attempts):
        await runtime.dispatch_tick()
        clock.advance(hours=2)
    (row,) = deliveries(engine)
    assert row.status == "failed" and row.attempts == settings.max_attempts
    assert row.reason.startswith(f"gave up after {settings.max_attempts} attempts")


async def test_permanent_error_fails_with_reason(engine, clock, runtime):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    (contact,) = _contacts(engine, 1)
    enroll(engine, template_id, [(contact, T0)], T0)
    runtime.channels.get("mock").config.fail_mode = "permanent"
    await runtime.dispatch_tick()
    row = deliveries(engine)[0]
    assert (row.status, row.reason) == ("failed", "mock: simulated permanent error")


async def test_render_error_for_one_contact_fails_only_that_delivery(engine, clock, runtime):
    clock.set(T0)
    spec = new_friend_spec(
        touchpoints=[{"name": "a", "timing": "+0m", "content": "{{ contact.attributes.city }}见"}]
    )
    template_id = publish(engine, spec, T0)
    with_city = add_contact(engine, "wm_a", "甲", T0, attributes={"city": "上海"})
    without = add_contact(engine, "wm_b", "乙", T0)
    enroll(engine, template_id, [(with_city, T0), (without, T0)], T0)
    await runtime.dispatch_tick()
    by_target = {r.target_id: r for r in deliveries(engine)}
    assert by_target[with_city].status == "sent"
    assert by_target[with_city].rendered == [{"kind": "text", "text": "上海见"}]
    assert by_target[without].status == "failed"
    assert "city" in by_target[without].reason


async def test_archive_cancels_pending_and_pause_holds(engine, clock, runtime):
    from scheduler.outbox import service as scheduler_service
    from sop_templates import service as templates_service
    from sopbot.db import session_scope

    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    ids = _contacts(engine, 2)
    enroll(engine, template_id, [(i, T0) for i in ids], T0)
    with session_scope(engine) as session:
        templates_service.set_status(session, template_id, "paused", T0)
    await runtime.dispatch_tick()
    assert mock_sends(engine) == []
    with session_scope(engine) as session:
        templates_service.set_status(session, template_id, "published", T0)
    await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 2
    with session_scope(engine) as session:
        assert scheduler_service.archive_template(session, template_id, T0) == 4
    statuses = sorted(r.status for r in deliveries(engine))
    assert statuses == ["cancelled"] * 4 + ["sent"] * 2
    assert {r.reason for r in deliveries(engine) if r.status == "cancelled"} == {
        "template archived"
    }


async def test_inactive_contact_is_skipped_with_reason(engine, clock, runtime):
    from audiences.models import Contact
    from sopbot.db import session_scope

    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    (contact,) = _contacts(engine, 1)
    enroll(engine, template_id, [(contact, T0)], T0)
    with session_scope(engine) as session:
        session.get(Contact, contact).status = "deleted"
    await runtime.dispatch_tick()
    row = deliveries(engine)[0]
    assert (row.status, row.reason) == ("skipped", "contact is deleted")


async def test_day_at_time_already_past_is_skipped_with_reason(engine, clock, runtime):
    # tagged at 21:00 Shanghai: "day 1 at 20:00" has already passed
    tagged = datetime(2027, 3, 1, 13, 0, tzinfo=UTC)
    clock.set(tagged)
    spec = new_friend_spec(
        touchpoints=[
            {"name": "d1", "timing": "day 1 20:00", "content": "今晚上课"},
            {
                "name": "d1-send",
                "timing": "day 1 20:00",
                "content": "今晚上课",
                "past_policy": "send",
            },
            {"name": "d2", "timing": "day 2 19:30", "content": "预习"},
        ]
    )
    template_id = publish(engine, spec, tagged)
    (contact,) = _contacts(engine, 1)
    result = enroll(engine, template_id, [(contact, tagged)], tagged)
    assert result.skipped == 1
    d1, d1_send, d2 = sorted(deliveries(engine), key=lambda r: r.touchpoint_id)
    assert (d1.status, d1.reason) == ("skipped", "time already past when enrolled")
    assert d1_send.status == "scheduled" and d2.status == "scheduled"
    await runtime.dispatch_tick()
    assert deliveries(engine, id=d1_send.id)[0].status == "sent"  # within its 1 h grace
