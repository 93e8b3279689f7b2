"""`kill -9` of a worker while it writes a fixed start's touchpoint
(``scheduler.flows.fan_out``), then a restart: every enrollment ends with its
one row, none twice, and the touchpoint no longer waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from harness import backends_gone, start_worker, wait_until
from sqlalchemy import func, select, text

from scheduler.flows import lifecycle
from scheduler.outbox.models import Delivery, Enrollment
from sop_templates import service as templates_service
from sop_templates.models import Touchpoint
from sopbot.db import session_scope

pytestmark = pytest.mark.postgres

CONTACTS = 200_000  # four of the planner's chunks of 50,000 enrollments
ACTOR = lifecycle.Actor(require_approval=False, audit=lambda *entry: None)


def _seed(engine, start: datetime, published: datetime) -> int:
    """``CONTACTS`` tagged contacts and a fixed-start SOP for them, published
    at ``published`` (so its one touchpoint, at ``start``, was left to the planner)."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tags (name) VALUES ('春季班')"))
        conn.execute(
            text(
                "INSERT INTO contacts (external_id, name, joined_at, status, attributes) "
                "SELECT 'wm' || g, '学员' || g, :at, 'active', '{}' FROM generate_series(1, :n) g"
            ),
            {"at": published, "n": CONTACTS},
        )
        conn.execute(
            text(
                "INSERT INTO tag_assignments (tag_id, target_kind, target_id, tagged_at) "
                "SELECT t.id, 'contact', c.id, :at FROM contacts c, tags t"
            ),
            {"at": published},
        )
    spec = {
        "name": "春季班（固定开课）",
        "target": "contact",
        "timezone": "UTC",
        "anchor": "fixed",
        "start_at": start.isoformat(),
        "segment": {"tags": "春季班"},
        "touchpoints": [{"name": "开课", "timing": "+0", "content": "开课了"}],
    }
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, published)
        outcome = lifecycle.publish(session, template.id, published, ACTOR)
        assert (outcome.enrolled, outcome.deliveries, outcome.planned_later) == (CONTACTS, 0, 1)
        return template.id  # type: ignore[return-value]


def _rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Delivery)).scalar_one()


def test_kill_9_while_writing_a_touchpoint_leaves_one_row_per_enrollment(
    scale_url, scale_engine, workdir
):
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    _seed(scale_engine, start, published=start - timedelta(hours=1))
    # the touchpoint is due within the planner's 10 minutes: its first tick writes it
    victim = start_worker(scale_url, "victim", workdir, plan_interval_seconds=0.2)
    try:
        wait_until(lambda: _rows(scale_engine) > 0, 60, interval=0.01, what="a first chunk")
        victim.kill()
    finally:
        victim.close()
    backends_gone(scale_engine, "victim")
    written = _rows(scale_engine)
    assert 0 < written < CONTACTS, "the kill should land between two chunks"

    restarted = start_worker(scale_url, "victim", workdir, plan_interval_seconds=0.2)
    try:
        wait_until(lambda: _rows(scale_engine) == CONTACTS, 120, interval=0.2, what="every row")
        assert restarted.terminate() == 0
    finally:
        restarted.close()
    with scale_engine.connect() as conn:
        per_enrollment = conn.execute(
            select(func.count(func.distinct(Delivery.enrollment_id)), func.count())
        ).one()
        statuses = dict(
            conn.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
        enrolled = conn.execute(select(func.count()).select_from(Enrollment)).scalar_one()
        waiting = conn.execute(
            select(func.count()).where(Touchpoint.fan_out_at.is_not(None))  # type: ignore[union-attr]
        ).scalar_one()
    assert tuple(per_enrollment) == (CONTACTS, CONTACTS) and enrolled == CONTACTS
    assert statuses == {"scheduled": CONTACTS}
    assert waiting == 0
