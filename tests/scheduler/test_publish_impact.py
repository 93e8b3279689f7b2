"""The publish impact, worked out without writing, equals what publish then
does: enrolled now, deliveries written, and the enrolled / pending counts that
keep / move act on."""

from __future__ import annotations

from datetime import UTC, datetime

from factories import add_contact
from sqlalchemy import func, select

from scheduler.flows import fan_out, impact, lifecycle
from scheduler.outbox.models import Delivery, DeliveryStatus
from sop_templates import library
from sop_templates import service as templates_service
from sopbot.db import session_scope

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)


def actor() -> lifecycle.Actor:
    return lifecycle.Actor(require_approval=False, audit=lambda *a: None)


def counts(session) -> tuple[int, int]:
    total = session.scalar(select(func.count()).select_from(Delivery))
    pending = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.status == DeliveryStatus.SCHEDULED)
    )
    return total, pending


def test_impact_matches_what_publish_writes_and_writes_nothing(engine):
    for i in range(7):
        add_contact(engine, f"wm_{i}", f"客户{i}", JOIN, tags=["春季班"] if i < 5 else [])
    spec = library.load("tagged_class")
    spec.update(anchor="fixed", start_at="2027-03-03T00:00:00", segment={"tags": "春季班"})
    spec.pop("anchor_tag")
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, JOIN)
        before = counts(session)
        seen = impact.publish_impact(session, template, JOIN)
        assert counts(session) == before and not session.new and not session.dirty
        assert (seen.enrolls_now, seen.enrolled, seen.deliveries, seen.active) == (True, 5, 15, 0)
        done = lifecycle.publish(session, template.id, JOIN, actor())
        # the class starts days later: the planner writes the rows shortly before
        later = fan_out.waiting(session, template.id)
        assert (done.enrolled, done.deliveries, done.planned_later) == (seen.enrolled, 0, 3)
        assert counts(session)[0] + later == seen.deliveries == later
        # a second version: nobody new, the five enrolled and their pending ones
        template = templates_service.get_template(session, template.id)
        again = impact.publish_impact(session, template, JOIN)
        assert (again.enrolled, again.active, again.pending) == (0, 5, counts(session)[1] + later)
        assert again.pending == 15


def test_a_tag_anchored_sop_enrolls_nobody_at_publish(engine):
    add_contact(engine, "wm_1", "客户", JOIN, tags=["春季班"])
    with session_scope(engine) as session:
        template = templates_service.create_template(session, library.load("tagged_class"), JOIN)
        seen = impact.publish_impact(session, template, JOIN)
        assert (seen.enrolls_now, seen.enrolled, seen.deliveries) == (False, 0, 0)
        assert lifecycle.publish(session, template.id, JOIN, actor()).enrolled == 0


def test_live_sops_welcoming_the_same_friends_in_the_same_hour_are_flagged(engine):
    from factories import new_friend_spec, publish

    friends = {"kind": "new_friends"}
    live_id = publish(engine, new_friend_spec(name="老欢迎语", segment=friends), JOIN)
    late = [{"name": "late", "timing": "+5h", "content": ["晚上好"]}]
    publish(engine, new_friend_spec(name="晚上才发", segment=friends, touchpoints=late), JOIN)
    add_contact(engine, "wm_1", "客户", JOIN, tags=["春季班"])
    with session_scope(engine) as session:
        draft = templates_service.create_template(
            session,
            new_friend_spec(
                name="新欢迎语",
                segment=friends,
                touchpoints=[{"name": "hello", "timing": "+10m", "content": ["你好"]}],
            ),
            JOIN,
        )
        found = impact.overlaps(session, draft, JOIN)
        assert [(o.template_id, o.touchpoints) for o in found] == [
            (live_id, [("hello", "welcome")])
        ]
        tagged = templates_service.create_template(session, library.load("tagged_class"), JOIN)
        assert impact.overlaps(session, tagged, JOIN) == []
