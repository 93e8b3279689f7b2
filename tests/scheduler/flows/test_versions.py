"""Publishing v2 with contacts mid-SOP (keep / move by touchpoint name), and
pause holding deliveries that resume releases exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from factories import (
    add_contact,
    add_group,
    deliveries,
    enroll,
    mock_sends,
    new_friend_spec,
    sends_per_delivery,
    store_menu_spec,
)
from factories import publish as create_and_publish
from sqlmodel import select

from scheduler.flows import lifecycle
from sop_templates import service as templates_service
from sop_templates.models import TemplateStatus, Touchpoint
from sopbot.db import session_scope

ACTOR = lifecycle.Actor(require_approval=False, audit=lambda *entry: None)
JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)  # Tue 21:30 Shanghai


def _v2_spec() -> dict:
    """v2: the coupon moves from +3h to +4h with new words, the reminder is
    dropped, a day-3 follow-up is new."""
    spec = new_friend_spec()
    spec["touchpoints"][1]["timing"] = "+4h"
    spec["touchpoints"][1]["content"] = ["v2: {{ contact.name }}，优惠券升级了"]
    spec["touchpoints"][2] = {
        "name": "follow-up",
        "timing": "day 3 10:00",
        "content": ["v2 回访"],
    }
    return spec


def _publish_v2(engine, template_id: int, now: datetime, migrate: str) -> lifecycle.PublishOutcome:
    with session_scope(engine) as session:
        templates_service.update_draft(session, template_id, _v2_spec(), now)
        return lifecycle.publish(session, template_id, now, ACTOR, migrate=migrate)


def _touchpoint_names(engine) -> dict[int, tuple[int, str]]:
    with session_scope(engine) as session:
        return {tp.id: (tp.version_id, tp.name) for tp in session.exec(select(Touchpoint)).all()}


@pytest.fixture
def mid_sop(engine, clock, runtime):
    """Two contacts enrolled in v1; the +0 welcome already went out."""
    clock.set(JOIN)
    template_id = create_and_publish(engine, new_friend_spec(), JOIN)
    ids = [add_contact(engine, f"wm_{i}", f"客户{i}", JOIN) for i in range(2)]
    enroll(engine, template_id, [(i, JOIN) for i in ids], JOIN)
    return template_id


async def test_keep_leaves_pending_deliveries_on_v1(engine, clock, runtime, mid_sop):
    await runtime.dispatch_tick()  # the welcomes
    clock.advance(minutes=30)
    before = {d.id: (d.version_id, d.touchpoint_id, d.due_at) for d in deliveries(engine)}
    outcome = _publish_v2(engine, mid_sop, clock.now(), "keep")
    assert outcome.version.version == 2 and outcome.moved.enrollments == 0
    after = {d.id: (d.version_id, d.touchpoint_id, d.due_at) for d in deliveries(engine)}
    assert after == before  # nothing re-pointed, nothing added

    # a contact joining now gets v2
    newcomer = add_contact(engine, "wm_new", "新人", clock.now())
    enroll(engine, mid_sop, [(newcomer, clock.now())], clock.now())
    new_rows = deliveries(engine, target_id=newcomer)
    assert {d.version_id for d in new_rows} == {outcome.version.id}

    # the v1 contacts still get v1's coupon at +3h with v1's words
    clock.set(JOIN + timedelta(hours=3, minutes=1))
    await runtime.dispatch_tick()
    coupons = [m for m in mock_sends(engine) if "优惠券" in m.parts[0]["text"]]
    assert len(coupons) == 2 and all("v2" not in m.parts[0]["text"] for m in coupons)


async def test_move_follows_v2_by_touchpoint_name(engine, clock, runtime, mid_sop):
    await runtime.dispatch_tick()  # the welcomes went out on v1
    clock.advance(minutes=30)
    outcome = _publish_v2(engine, mid_sop, clock.now(), "move")
    v2 = outcome.version.id
    assert outcome.moved.enrollments == 2
    assert (outcome.moved.moved, outcome.moved.cancelled, outcome.moved.added) == (2, 2, 2)

    names = _touchpoint_names(engine)
    by_name: dict[str, list] = {}
    for d in deliveries(engine):
        by_name.setdefault(names[d.touchpoint_id][1], []).append(d)
    # sent history stays on v1, once
    assert all(d.status == "sent" and d.version_id != v2 for d in by_name["welcome"])
    # the coupon follows v2: new touchpoint, due again from the anchor with +4h
    assert all(d.version_id == v2 and names[d.touchpoint_id][0] == v2 for d in by_name["coupon"])
    assert {d.due_at for d in by_name["coupon"]} == {JOIN + timedelta(hours=4)}
    # the reminder is gone in v2: cancelled, with the reason
    assert {d.status for d in by_name["reminder"]} == {"cancelled"}
    assert "not in version 2" in by_name["reminder"][0].reason
    # the follow-up is new in v2: added for both, day 3 10:00 Shanghai
    assert {d.due_at for d in by_name["follow-up"]} == {datetime(2027, 3, 4, 2, 0, tzinfo=UTC)}

    clock.set(JOIN + timedelta(hours=4, minutes=1))
    await runtime.dispatch_tick()
    texts = [m.parts[0]["text"] for m in mock_sends(engine)]
    assert sum("v2:" in t for t in texts) == 2
    assert set(sends_per_delivery(engine).values()) == {1}

    # moving again (v3 publish with move) does not duplicate anything
    with session_scope(engine) as session:
        again = lifecycle.publish(session, mid_sop, clock.now(), ACTOR, migrate="move")
    assert again.moved.added == 0
    assert len(deliveries(engine)) == 8


async def test_move_of_a_cron_template_repoints_its_enrollments(engine, clock, runtime):
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))  # 10:00 Shanghai
    template_id = create_and_publish(engine, store_menu_spec(), clock.now())
    group = add_group(engine, "wr_1", "徐汇店", clock.now())
    enroll(engine, template_id, [(group, clock.now())], clock.now())
    spec = store_menu_spec()
    spec["touchpoints"][0]["content"] = ["v2 {{ group.name }} 菜单"]
    with session_scope(engine) as session:
        templates_service.update_draft(session, template_id, spec, clock.now())
        outcome = lifecycle.publish(session, template_id, clock.now(), ACTOR, migrate="move")
    assert outcome.moved.enrollments == 1
    clock.set(datetime(2027, 3, 1, 3, 0, 30, tzinfo=UTC))  # 11:00:30 Shanghai
    await runtime.plan_tick()
    await runtime.dispatch_tick()
    sent = mock_sends(engine)
    assert [m.parts[0]["text"] for m in sent] == ["v2 徐汇店 菜单"]


async def test_pause_holds_and_resume_releases_without_duplicates(engine, clock, runtime, mid_sop):
    await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 2
    with session_scope(engine) as session:
        templates_service.set_status(session, mid_sop, TemplateStatus.PAUSED, clock.now())
    clock.set(JOIN + timedelta(hours=3, minutes=5))  # the coupon is due
    for _ in range(3):
        await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 2  # held
    coupons = [d for d in deliveries(engine) if d.due_at == JOIN + timedelta(hours=3)]
    assert {d.status for d in coupons} == {"scheduled"}  # not lost, not missed

    with session_scope(engine) as session:
        templates_service.set_status(session, mid_sop, TemplateStatus.PUBLISHED, clock.now())
    await runtime.dispatch_tick()
    await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 4
    assert set(sends_per_delivery(engine).values()) == {1}
    assert {d.status for d in deliveries(engine) if d.due_at == JOIN + timedelta(hours=3)} == {
        "sent"
    }


async def test_unknown_migration_is_refused(engine, clock, mid_sop):
    with session_scope(engine) as session, pytest.raises(templates_service.TemplateError):
        lifecycle.publish(session, mid_sop, clock.now(), ACTOR, migrate="teleport")
