"""Publishing a fixed-start SOP enrolls the segment in SQL (``set_enroll``):
the rows -- those written at publish and those the planner writes later
(``fan_out``) -- are exactly those the row-by-row enrollment writes for the
same publish: holdout, A/B variants, quiet hours, a time already past, targets
enrolled or exited before, exit tags, a contact who left."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from factories import add_contact
from sqlalchemy import func, select, update
from sqlmodel import col

from scheduler.flows import enrollment, fan_out
from scheduler.outbox import service as scheduler_service
from scheduler.outbox import set_checks, set_enroll
from scheduler.outbox.models import Delivery, Enrollment, EnrollmentStatus
from sop_templates import service as templates_service
from sop_templates.models import Touchpoint
from sopbot.db import session_scope

JOIN = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
NOW = datetime(2027, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai, on the start day


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "春季班（固定开课）",
        "target": "contact",
        "timezone": "Asia/Shanghai",
        "anchor": "fixed",
        "start_at": "2027-03-02T09:00:00",
        "segment": {"tags": "春季班"},
        "exit": {"tags_added": ["已购买"]},
        "holdout": "30%",
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "touchpoints": [
            {"name": "开课前", "timing": "day 1 08:00", "content": "已过时"},  # past: skipped
            {"name": "开课后", "timing": "+1h", "content": "{{ contact.name }} 好"},  # late
            {"name": "深夜", "timing": "day 1 23:00", "content": "夜里"},  # deferred
            {
                "name": "预习",
                "timing": "day 2 19:30",
                "variants": [
                    {"name": "A", "weight": 1, "content": "预习 A"},
                    {"name": "B", "weight": 2, "content": "预习 B"},
                ],
            },
            # at the instant of the one before: one statement writes both
            {"name": "预习提醒", "timing": "day 2 19:30", "content": "同一时刻"},
            {"name": "每日", "timing": "cron 0 11 * * *", "content": "每日一句"},
        ],
    }
    spec.update(overrides)
    return spec


def _world(engine) -> int:
    """40 tagged contacts: 0-3 enrolled by hand before (4-5 of them exited
    since), 6-8 carry the exit tag, 9 left; one more contact is not tagged."""
    ids = []
    for i in range(40):
        tags = ["春季班", "已购买"] if 6 <= i <= 8 else ["春季班"]
        ids.append(add_contact(engine, f"wm_{i}", f"学员{i}", JOIN, tags=tags))
    add_contact(engine, "wm_other", "路人", JOIN)
    with session_scope(engine) as session:
        template = templates_service.create_template(session, _spec(), JOIN)
        templates_service.freeze_draft(session, template.id, JOIN)  # v1, live
        scheduler_service.enroll(session, template, [(i, JOIN) for i in ids[:6]], JOIN)
        session.execute(
            update(Enrollment)
            .where(Enrollment.target_id.in_(ids[4:6]))
            .values(status=EnrollmentStatus.EXITED, exited_at=JOIN, exit_reason="left")
        )
        session.execute(
            update(Enrollment.metadata.tables["contacts"])
            .where(Enrollment.metadata.tables["contacts"].c.id == ids[9])
            .values(status="deleted")
        )
        templates_service.update_draft(session, template.id, _spec(), JOIN)
        return template.id  # type: ignore[return-value]


def _publish_v2(engine, template_id: int, set_based: bool) -> tuple[Any, list, list]:
    """Publish the draft as v2 with one path, read what it wrote, roll back."""
    with session_scope(engine) as session:
        template = templates_service.get_template(session, template_id)
        version = templates_service.freeze_draft(session, template_id, NOW)
        result = enrollment.enroll_segment(session, template, version, NOW, set_based=set_based)
        later = list(
            session.execute(
                select(Touchpoint.id).where(
                    Touchpoint.version_id == version.id, col(Touchpoint.fan_out_at).is_not(None)
                )
            ).scalars()
        )
        assert len(later) == result.planned_later == (3 if set_based else 0)
        # the planner's rows, written as of the publish (the rows' created_at)
        written = sum(fan_out.fan_out(session, t, NOW, chunk=7, commit=False) for t in later)
        names = dict(session.execute(select(Touchpoint.id, Touchpoint.name)).all())
        enrollments = {
            e.id: e
            for e in session.execute(
                select(Enrollment).where(Enrollment.version_id == version.id)
            ).scalars()
        }
        target_of = {e_id: e.target_id for e_id, e in enrollments.items()}
        rows = sorted(
            (
                target_of[d.enrollment_id],
                names[d.touchpoint_id],
                d.occurrence,
                d.template_id,
                d.target_kind,
                d.target_id,
                d.channel,
                d.mode,
                d.due_at,
                d.run_at,
                d.expires_at,
                d.status,
                d.reason,
                d.attempts,
                d.created_at,
                d.finished_at,
                d.variant,
                d.sent_at,
                d.lease_owner,
            )
            for d in session.execute(
                select(Delivery).where(Delivery.version_id == version.id).order_by(Delivery.id)
            ).scalars()
        )
        # the order they are claimed in: by run_at, then as written
        order = [
            (target_of[e_id], names[tp])
            for e_id, tp in session.execute(
                select(Delivery.enrollment_id, Delivery.touchpoint_id)
                .where(Delivery.version_id == version.id, Delivery.occurrence == 0)
                .order_by(Delivery.run_at, Delivery.id)
            ).all()
        ]
        people = sorted(
            (e.target_id, e.cycle, e.anchor_at, e.enrolled_at, e.status, e.holdout)
            for e in enrollments.values()
        )
        session.rollback()
    return (result.enrolled, result.deliveries + written), rows + [order], people


def test_set_based_publish_writes_the_rows_of_the_row_by_row_path(engine, monkeypatch):
    template_id = _world(engine)
    calls = []
    enroll_all = set_enroll.enroll_all
    monkeypatch.setattr(set_enroll, "enroll_all", lambda *a: calls.append(1) or enroll_all(*a))
    checked_once, once = set_checks.checked_once, []

    @contextmanager
    def recorded(*args: Any) -> Iterator[bool]:
        with checked_once(*args) as taken:
            once.append(taken)
            yield taken

    monkeypatch.setattr(set_checks, "checked_once", recorded)
    rows_way = _publish_v2(engine, template_id, set_based=False)
    assert calls == []
    set_way = _publish_v2(engine, template_id, set_based=True)
    assert calls == [1]
    # on PostgreSQL the rows compared are the ones written with the keys checked once
    assert once == [engine.dialect.name == "postgresql"]
    counts, rows, people = set_way
    assert counts == rows_way[0]
    assert people == rows_way[2]
    assert rows[:-1] == rows_way[1][:-1]  # every column
    # the same rows claimed by run_at (rows due at one instant: in the order written)
    assert sorted(rows[-1]) == sorted(rows_way[1][-1])
    # the mixed case is really mixed
    enrolled = {p[0] for p in people}
    assert len(enrolled) == 40 - 6 - 3 - 1 == counts[0]
    statuses = {(r[1], r[11], r[12]) for r in rows[:-1]}
    assert ("开课前", "skipped", "time already past when enrolled") in statuses
    assert any(s[1] == "skipped" and s[2] == "holdout" for s in statuses)
    assert any(
        name == "深夜" and reason and "quiet hours" in reason for name, _, reason in statuses
    )
    assert {r[16] for r in rows[:-1] if r[1] == "预习"} == {"A", "B"}
    assert any(p[5] for p in people) and not all(p[5] for p in people)


def test_more_of_a_segment_enrolled_in_the_same_transaction_leaves_the_first_rows(engine):
    """The deliveries' statement is a plain INSERT only when no enrollment it
    selects existed before; a second enroll at the same instant in the same
    transaction finds the first one's and keeps their rows."""
    template_id = _world(engine)
    contacts = Enrollment.metadata.tables["contacts"]
    anchor = datetime(2027, 3, 2, 1, 0, tzinfo=UTC)
    with session_scope(engine) as session:
        template = templates_service.get_template(session, template_id)
        version = templates_service.freeze_draft(session, template_id, NOW)
        targets = select(contacts.c.id)
        some = set_enroll.enroll_all(
            session, template, version, targets.where(contacts.c.id <= 20), anchor, NOW
        )
        rest = set_enroll.enroll_all(session, template, version, targets, anchor, NOW)
        written = session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(col(Delivery.version_id) == version.id, col(Delivery.occurrence) == 0)
        ).scalar_one()
        session.rollback()
    assert some.enrolled and rest.enrolled
    # two one-off touchpoints due by now each; the three later ones are the planner's
    assert rest.deliveries == 2 * rest.enrolled and rest.planned_later == 3
    assert written == 2 * (some.enrolled + rest.enrolled)
