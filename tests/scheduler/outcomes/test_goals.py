"""Goals: a conversion once per enrollment, at the event's time, attributed to
the last touchpoint sent before it; ``exit: true`` ends the SOP."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from sqlalchemy import select

from scheduler.flows import changes
from scheduler.outbox.models import Enrollment
from scheduler.outcomes.models import Conversion
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")


async def drain(runtime, clock, until: datetime, step: timedelta = timedelta(minutes=30)) -> None:
    while clock.now() < until:
        clock.advance(step)
        await runtime.dispatch_tick()


def tag(engine, external_id: str, tags: list[str], at: datetime):
    with session_scope(engine) as session:
        return changes.apply_events(
            session,
            [{"kind": "tag_added", "external_id": external_id, "tags": tags, "occurred_at": at}],
            at,
        )


def conversions(engine) -> list[Conversion]:
    with session_scope(engine) as session:
        return list(session.execute(select(Conversion)).scalars())


async def test_goal_tag_two_days_after_enrollment_converts_once_attributed_to_last_sent(
    engine, clock, runtime
):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = new_friend_spec(goal={"tags_added": ["purchased"], "within": "7d"})
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_zhang", "张三", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())

    await drain(runtime, clock, joined + timedelta(days=2))
    assert [d.status for d in deliveries(engine)] == ["sent", "sent", "sent"]

    bought = joined + timedelta(days=2)
    tag(engine, "wm_zhang", ["purchased"], bought)
    [conversion] = conversions(engine)
    assert conversion.converted_at == bought
    assert conversion.touchpoint_name == "reminder"  # day 2 20:00, the last one sent
    assert conversion.touched == ["welcome", "coupon", "reminder"]
    assert conversion.goal == "tag 'purchased' added"

    # the tag removed and added again, later: still one conversion
    with session_scope(engine) as session:
        changes.apply_events(
            session,
            [
                {"kind": "tag_removed", "external_id": "wm_zhang", "tags": ["purchased"]},
                {"kind": "tag_added", "external_id": "wm_zhang", "tags": ["purchased"]},
            ],
            bought + timedelta(hours=1),
        )
    assert len(conversions(engine)) == 1


async def test_attribution_is_the_last_step_sent_before_the_event(engine, clock, runtime):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, new_friend_spec(goal={"tags_added": ["purchased"]}), clock.now())
    contact_id = add_contact(engine, "wm_li", "李四", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())
    await drain(runtime, clock, joined + timedelta(hours=4))  # welcome and coupon sent

    tag(engine, "wm_li", ["purchased"], clock.now())
    [conversion] = conversions(engine)
    assert conversion.touchpoint_name == "coupon"
    assert conversion.touched == ["welcome", "coupon"]


def test_goal_outside_its_window_or_before_enrollment_does_not_convert(engine, clock):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = new_friend_spec(goal={"tags_added": ["purchased"], "within": "2d"})
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_wang", "王五", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())

    tag(engine, "wm_wang", ["purchased"], joined + timedelta(days=3))
    assert conversions(engine) == []


def test_goal_with_exit_ends_the_enrollment_and_cancels_what_is_pending(engine, clock):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = new_friend_spec(goal={"tags_added": ["purchased"], "exit": True})
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_zhao", "赵六", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())

    clock.advance(timedelta(hours=1))
    tag(engine, "wm_zhao", ["purchased"], clock.now())
    [conversion] = conversions(engine)
    assert conversion.touchpoint_name is None  # nothing had been sent yet
    with session_scope(engine) as session:
        [row] = session.execute(select(Enrollment)).scalars()
        assert row.status == "exited" and row.exit_reason == "goal reached: tag 'purchased' added"
    assert {d.status for d in deliveries(engine)} == {"cancelled"}


def test_contact_attribute_goal(engine, clock):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = new_friend_spec(goal={"event": "contact_updated", "where": {"stage": "paid"}})
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_qian", "钱七", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())

    clock.advance(timedelta(hours=5))
    with session_scope(engine) as session:
        changes.apply_events(
            session,
            [
                {
                    "kind": "contact_updated",
                    "external_id": "wm_qian",
                    "attributes": {"stage": "paid"},
                }
            ],
            clock.now(),
        )
    [conversion] = conversions(engine)
    assert conversion.converted_at == clock.now()
    assert conversion.goal == "contact updated: stage=paid"


def test_a_goal_needs_one_kind_and_a_valid_window():
    import pytest
    from pydantic import ValidationError

    from sop_templates.schemas import TemplateSpec

    with pytest.raises(ValidationError, match="either tags_added"):
        TemplateSpec.model_validate(new_friend_spec(goal={"within": "7d"}))
    with pytest.raises(ValidationError, match="within"):
        TemplateSpec.model_validate(new_friend_spec(goal={"tags_added": ["x"], "within": "0m"}))
