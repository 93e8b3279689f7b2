"""Quiet hours and per-contact frequency caps: the pure decisions, and what a
contact actually receives when templates enroll and the dispatcher runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from scheduler.outbox.policies import FrequencyCap, QuietHours
from scheduler.runtime import SchedulerRuntime
from sop_templates.schemas import FrequencyCapSpec
from sop_templates.service import TemplateValidationError, parse_spec

SHANGHAI = ZoneInfo("Asia/Shanghai")


def sh(day: int, hour: int, minute: int = 0) -> datetime:
    """A March 2027 Shanghai wall-clock time as UTC."""
    return datetime(2027, 3, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def one_touchpoint(name: str, timing: str, **extra: object) -> dict[str, object]:
    return new_friend_spec(
        name=name,
        touchpoints=[{"name": "tp", "timing": timing, "content": f"{name}：你好"}],
        **extra,
    )


# -- pure decisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected_end"),
    [
        ((1, 21, 59), None),
        ((1, 22, 0), (2, 8, 0)),
        ((1, 23, 30), (2, 8, 0)),
        ((2, 1, 30), (2, 8, 0)),
        ((2, 7, 59), (2, 8, 0)),
        ((2, 8, 0), None),
        ((2, 12, 0), None),
    ],
)
def test_quiet_hours_across_midnight(local, expected_end):
    quiet = QuietHours(time(22), time(8))
    end = quiet.window_end(sh(*local), SHANGHAI)
    assert end == (sh(*expected_end) if expected_end else None)


def test_quiet_hours_within_a_day_and_across_a_dst_change():
    lunch = QuietHours(time(12), time(14))
    assert lunch.window_end(sh(1, 13), SHANGHAI) == sh(1, 14)
    assert lunch.window_end(sh(1, 14), SHANGHAI) is None
    # New York springs forward on 2027-03-14: 08:00 EDT is 12:00 UTC, not 13:00.
    new_york = ZoneInfo("America/New_York")
    night = QuietHours(time(22), time(8))
    at = datetime(2027, 3, 13, 23, 0, tzinfo=new_york)
    assert night.window_end(at, new_york) == datetime(2027, 3, 14, 12, 0, tzinfo=UTC)


def test_quiet_hours_decision_says_what_and_until_when():
    defer = QuietHours(time(22), time(8)).decide(sh(2, 1, 30), SHANGHAI)
    assert (defer.action, defer.until) == ("defer", sh(2, 8))
    assert defer.reason == (
        "quiet hours 22:00-08:00 (Asia/Shanghai): deferred from 2027-03-02 01:30 to 2027-03-02 08:00"
    )
    skip = QuietHours(time(22), time(8), "skip").decide(sh(2, 1, 30), SHANGHAI)
    assert skip.action == "skip" and "skipped by policy" in skip.reason


def cap(value: object) -> FrequencyCap:
    made = FrequencyCap.from_spec(FrequencyCapSpec.model_validate(value))
    assert made is not None
    return made


def test_wecom_presets_count_calendar_windows_in_the_template_zone():
    daily = cap("wecom_daily")
    # 23:30 on the 1st and 00:30 on the 2nd are different days in Shanghai.
    assert daily.decide(sh(2, 0, 30), SHANGHAI, [sh(1, 23, 30)]).action == "send"
    held = daily.decide(sh(2, 20), SHANGHAI, [sh(2, 0, 30)])
    assert (held.action, held.until) == ("defer", sh(3, 0))

    weekly = cap("wecom_weekly")  # 2027-03-01 is a Monday
    week = [sh(day, 10) for day in range(1, 8)]
    assert weekly.decide(sh(7, 20), SHANGHAI, week[:6]).action == "send"
    assert weekly.decide(sh(7, 20), SHANGHAI, week).until == sh(8, 0)

    monthly = cap("wecom_monthly_days")  # February 2027 has 28 days
    feb = [datetime(2027, 2, d, 2, tzinfo=UTC) for d in range(1, 28)]
    at = datetime(2027, 2, 27, 12, tzinfo=UTC)
    assert monthly.decide(at, SHANGHAI, feb).action == "send"  # 27 of 28
    assert monthly.decide(at, SHANGHAI, [*feb, at]).until == sh(1, 0)


def test_custom_cap_is_a_sliding_window():
    two_a_day = cap({"max": 2, "per": "24h", "policy": "defer"})
    t = datetime(2027, 3, 1, 12, tzinfo=UTC)
    sends = [t - timedelta(hours=20), t - timedelta(hours=2)]
    held = two_a_day.decide(t, SHANGHAI, sends)
    assert held.action == "defer"
    assert held.until == t + timedelta(hours=4, seconds=1)  # the 20-hour-old one leaves
    assert two_a_day.decide(held.until, SHANGHAI, sends).action == "send"
    assert (
        cap({"max": 1, "per": "1d", "policy": "skip"}).decide(t, SHANGHAI, sends).action == "skip"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("quiet_hours", "22:00", "not like 22:00-08:00"),
        ("quiet_hours", {"start": "24:00", "end": "08:00"}, "quiet_hours.start"),
        ("quiet_hours", {"start": "22:00", "end": "08:00", "policy": "drop"}, "quiet_hours.policy"),
        ("frequency_cap", "daily", "unknown frequency cap 'daily'"),
        ("frequency_cap", {"max": 3}, "needs both max and per"),
        ("frequency_cap", {"preset": "wecom_daily", "max": 2, "per": "1d"}, "not both"),
        ("frequency_cap", {"max": 1, "per": "10s"}, "between 1m and 366d"),
    ],
)
def test_invalid_policies_are_rejected_with_the_field_named(field, value, message):
    with pytest.raises(TemplateValidationError) as err:
        parse_spec(new_friend_spec(**{field: value}))
    assert message in str(err.value)


# -- quiet hours when due times are computed ----------------------------------------


async def test_quiet_hours_defer_a_touchpoint_falling_at_0130_to_0800(engine, clock, runtime):
    joined = sh(1, 22, 30)  # +3h falls at 01:30
    clock.set(joined)
    spec = one_touchpoint("优惠券", "+3h", quiet_hours={"start": "22:00", "end": "08:00"})
    template_id = publish(engine, spec, joined)
    contact = add_contact(engine, "wm_night", "夜猫子", joined)
    enroll(engine, template_id, [(contact, joined)], joined)

    (row,) = deliveries(engine)
    assert (row.status, row.due_at, row.run_at) == ("scheduled", sh(2, 1, 30), sh(2, 8))
    assert row.reason == (
        "quiet hours 22:00-08:00 (Asia/Shanghai): deferred from 2027-03-02 01:30 to 2027-03-02 08:00"
    )
    assert row.expires_at == sh(2, 8) + timedelta(hours=6)  # the grace counts from 08:00

    clock.set(sh(2, 1, 30))
    await runtime.dispatch_tick()
    assert mock_sends(engine) == []
    clock.set(sh(2, 8))
    await runtime.dispatch_tick()
    (row,) = deliveries(engine)
    assert (row.status, row.sent_at) == ("sent", sh(2, 8))
    assert len(mock_sends(engine)) == 1


async def test_quiet_hours_skip_policy_skips_with_the_reason(engine, clock, runtime):
    joined = sh(1, 22, 30)
    clock.set(joined)
    quiet = {"start": "22:00", "end": "08:00", "policy": "skip"}
    template_id = publish(engine, one_touchpoint("优惠券", "+3h", quiet_hours=quiet), joined)
    contact = add_contact(engine, "wm_night", "夜猫子", joined)
    result = enroll(engine, template_id, [(contact, joined)], joined)

    assert result.skipped == 1
    (row,) = deliveries(engine)
    assert row.status == "skipped" and row.finished_at == joined
    assert row.reason == (
        "quiet hours 22:00-08:00 (Asia/Shanghai): 2027-03-02 01:30 is inside, skipped by policy"
    )
    clock.set(sh(2, 9))
    await runtime.dispatch_tick()
    assert mock_sends(engine) == []


async def test_cron_occurrence_inside_quiet_hours_is_deferred(engine, clock, runtime):
    clock.set(sh(1, 10))
    spec = new_friend_spec(
        name="夜间提醒",
        quiet_hours="22:00-08:00",
        touchpoints=[{"name": "night", "timing": "cron 30 23 * * *", "content": "晚安"}],
    )
    template_id = publish(engine, spec, clock.now())
    contact = add_contact(engine, "wm_1", "甲", clock.now())
    enroll(engine, template_id, [(contact, clock.now())], clock.now())
    clock.set(sh(1, 23, 29))
    await runtime.plan_tick()
    (row,) = deliveries(engine)
    assert (row.due_at, row.run_at, row.status) == (sh(1, 23, 30), sh(2, 8), "scheduled")
    assert "deferred from 2027-03-01 23:30" in row.reason


# -- quiet hours again at dispatch -----------------------------------------------------


def runtime_with(engine, clock, settings, **changes) -> SchedulerRuntime:
    return SchedulerRuntime(engine, clock, settings.model_copy(update=changes))


async def test_workspace_quiet_hours_defer_at_dispatch_and_a_template_may_opt_out(
    engine, clock, settings
):
    joined = sh(1, 22, 30)
    clock.set(joined)
    runtime = runtime_with(engine, clock, settings, quiet_hours="22:00-08:00")
    quiet_by_default = publish(engine, one_touchpoint("欢迎", "+0m"), joined)
    opted_out = publish(engine, one_touchpoint("通知", "+0m", quiet_hours="off"), joined)
    contact = add_contact(engine, "wm_1", "甲", joined)
    for template_id in (quiet_by_default, opted_out):
        enroll(engine, template_id, [(contact, joined)], joined)

    await runtime.dispatch_tick()
    by_template = {r.template_id: r for r in deliveries(engine)}
    deferred, sent = by_template[quiet_by_default], by_template[opted_out]
    assert sent.status == "sent"
    assert (deferred.status, deferred.run_at, deferred.attempts) == ("scheduled", sh(2, 8), 0)
    assert deferred.reason.startswith("quiet hours 22:00-08:00 (Asia/Shanghai): deferred from")
    assert deferred.expires_at == sh(2, 8) + timedelta(hours=6)

    clock.set(sh(2, 8))
    await runtime.dispatch_tick()
    assert {r.status for r in deliveries(engine)} == {"sent"}


async def test_quiet_hours_follow_the_contacts_own_zone_at_dispatch(engine, clock, settings):
    now = sh(1, 10)  # 10:00 in Shanghai, 02:00 in London
    clock.set(now)
    runtime = runtime_with(engine, clock, settings)
    template_id = publish(engine, one_touchpoint("欢迎", "+0m", quiet_hours="22:00-08:00"), now)
    london = add_contact(engine, "wm_uk", "Alice", now, timezone="Europe/London")
    local = add_contact(engine, "wm_sh", "小王", now)
    enroll(engine, template_id, [(london, now), (local, now)], now)

    await runtime.dispatch_tick()
    rows = {r.target_id: r for r in deliveries(engine)}
    assert rows[local].status == "sent"
    assert rows[london].status == "scheduled"
    assert rows[london].run_at == datetime(2027, 3, 1, 8, 0, tzinfo=UTC)  # 08:00 London
    assert "(Europe/London)" in rows[london].reason


# -- frequency caps ---------------------------------------------------------------------


async def test_one_per_day_cap_across_two_templates_defers_the_second(engine, clock, runtime):
    morning = sh(1, 10)
    clock.set(morning)
    first = publish(engine, one_touchpoint("课程提醒", "+0m", frequency_cap="wecom_daily"), morning)
    second = publish(
        engine, one_touchpoint("活动通知", "+5h", frequency_cap="wecom_daily"), morning
    )
    contact = add_contact(engine, "wm_1", "甲", morning)
    for template_id in (first, second):
        enroll(engine, template_id, [(contact, morning)], morning)

    await runtime.dispatch_tick()
    clock.set(sh(1, 15))
    await runtime.dispatch_tick()

    rows = {r.template_id: r for r in deliveries(engine)}
    assert rows[first].status == "sent"
    held = rows[second]
    assert (held.status, held.run_at, held.attempts) == ("scheduled", sh(2, 0), 0)
    assert held.reason == (
        "frequency cap wecom_daily: 1 already sent this day, "
        "deferred to 2027-03-02 00:00 (Asia/Shanghai)"
    )
    assert len(mock_sends(engine)) == 1

    clock.set(sh(2, 0))
    await runtime.dispatch_tick()
    assert deliveries(engine, template_id=second)[0].status == "sent"
    assert len(mock_sends(engine)) == 2


async def test_one_per_day_cap_with_skip_policy_skips_the_second(engine, clock, runtime):
    now = sh(1, 10)
    clock.set(now)
    skip_cap = {"preset": "wecom_daily", "policy": "skip"}
    first = publish(engine, one_touchpoint("课程提醒", "+0m", frequency_cap=skip_cap), now)
    second = publish(engine, one_touchpoint("活动通知", "+0m", frequency_cap=skip_cap), now)
    contact = add_contact(engine, "wm_1", "甲", now)
    for template_id in (first, second):
        enroll(engine, template_id, [(contact, now)], now)

    await runtime.dispatch_tick()  # both due in the same batch
    statuses = {r.template_id: (r.status, r.reason) for r in deliveries(engine)}
    assert statuses[first] == ("sent", None)
    assert statuses[second] == (
        "skipped",
        "frequency cap wecom_daily: 1 already sent this day, skipped by policy",
    )


async def test_cap_deferral_does_not_land_in_quiet_hours(engine, clock, runtime):
    now = sh(1, 10)
    clock.set(now)
    rules = {"frequency_cap": "wecom_daily", "quiet_hours": "22:00-08:00"}
    first = publish(engine, one_touchpoint("A", "+0m", **rules), now)
    second = publish(engine, one_touchpoint("B", "+0m", **rules), now)
    contact = add_contact(engine, "wm_1", "甲", now)
    for template_id in (first, second):
        enroll(engine, template_id, [(contact, now)], now)
    await runtime.dispatch_tick()
    held = deliveries(engine, template_id=second)[0]
    assert held.run_at == sh(2, 8)  # not midnight
    assert held.reason.endswith("after quiet hours 22:00-08:00")


async def test_two_workers_at_once_still_send_one_per_day(engine, clock, settings):
    now = sh(1, 10)
    clock.set(now)
    templates = [
        publish(engine, one_touchpoint(f"模板{n}", "+0m", frequency_cap="wecom_daily"), now)
        for n in range(3)
    ]
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", now) for i in range(10)]
    for template_id in templates:
        enroll(engine, template_id, [(c, now) for c in contacts], now)
    workers = [
        runtime_with(engine, clock, settings, worker_id=f"w{n}", claim_batch_size=4)
        for n in range(3)
    ]

    await asyncio.gather(*(w.dispatch_tick() for w in workers))

    sent = deliveries(engine, status="sent")
    assert sorted(r.target_id for r in sent) == sorted(contacts)  # exactly one each
    assert len(deliveries(engine, status="scheduled")) == 20
    assert len(mock_sends(engine)) == 10


async def test_a_delivery_in_flight_elsewhere_counts_against_the_cap(
    engine, clock, runtime, settings
):
    from scheduler.outbox.dispatch import Dispatcher

    now = sh(1, 10)
    clock.set(now)
    first = publish(engine, one_touchpoint("A", "+0m", frequency_cap="wecom_daily"), now)
    contact = add_contact(engine, "wm_1", "甲", now)
    enroll(engine, first, [(contact, now)], now)
    other = Dispatcher(engine, clock, runtime.channels, settings, worker_id="other")
    claimed = other.claim(10)
    messages, outcomes = other._prepare(claimed)
    assert other._mark_sending(list(messages), outcomes)  # now "sending" on the other worker

    second = publish(engine, one_touchpoint("B", "+0m", frequency_cap="wecom_daily"), now)
    enroll(engine, second, [(contact, now)], now)
    await runtime.dispatch_tick()
    held = deliveries(engine, template_id=second)[0]
    assert held.status == "scheduled" and held.reason.startswith("frequency cap wecom_daily")


async def test_weekly_cap_allows_seven_then_defers_to_monday(engine, clock, runtime):
    start = sh(1, 10)  # Monday
    clock.set(start)
    spec = new_friend_spec(
        name="每日打卡",
        frequency_cap="wecom_weekly",
        touchpoints=[
            {"name": f"d{n}", "timing": f"day {n} 10:00", "content": "打卡", "past_policy": "send"}
            for n in range(1, 8)
        ]
        + [{"name": "extra", "timing": "day 7 12:00", "content": "加餐"}],
    )
    template_id = publish(engine, spec, start)
    contact = add_contact(engine, "wm_1", "甲", start)
    enroll(engine, template_id, [(contact, start)], start)
    for instant in [sh(day, 10) for day in range(1, 8)] + [sh(7, 12)]:
        clock.set(instant)
        await runtime.dispatch_tick()
    rows = deliveries(engine)
    assert sum(r.status == "sent" for r in rows) == 7
    (extra,) = [r for r in rows if r.status != "sent"]
    assert (extra.status, extra.run_at) == ("scheduled", sh(8, 0))
