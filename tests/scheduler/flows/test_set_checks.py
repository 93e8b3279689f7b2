"""A publish's set-based rows have their foreign keys checked once for the set
on PostgreSQL (``set_checks``) only where that keeps every key valid: for a
version this very transaction wrote, with the template row locked as the
per-row check would, and only for the two statements; everywhere else the
per-row checks stay on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlmodel import col

from scheduler.outbox import set_checks
from sop_templates import service as templates_service
from sop_templates.models import Touchpoint
from sopbot.db import session_scope

NOW = datetime(2027, 3, 2, 4, 0, tzinfo=UTC)
SPEC = {
    "name": "春季班",
    "target": "contact",
    "anchor": "fixed",
    "start_at": "2027-03-02T09:00:00",
    "segment": {"tags": "春季班"},
    "touchpoints": [{"name": "提醒", "timing": "day 1 20:00", "content": "今晚上课"}],
}


def _role(session) -> str:
    return session.execute(text("SELECT current_setting('session_replication_role')")).scalar_one()


def _checked(session, template_id: int, version_id: int) -> tuple[bool, str | None]:
    touchpoints = list(
        session.execute(
            select(col(Touchpoint.id)).where(col(Touchpoint.version_id) == version_id)
        ).scalars()
    )
    with set_checks.checked_once(session, template_id, version_id, touchpoints) as once:
        inside = _role(session) if once else None
    return once, inside


def test_a_version_written_in_this_transaction_is_checked_once_for_the_set(engine):
    with session_scope(engine) as session:
        template = templates_service.create_template(session, SPEC, NOW)
        version = templates_service.freeze_draft(session, template.id, NOW)
        once, inside = _checked(session, template.id, version.id)
        if engine.dialect.name == "sqlite":  # cheap rowid lookups: always per row
            assert not once
            return
        assert once and inside == "replica"
        assert _role(session) == "origin"  # the rest of the transaction checks per row


def test_a_version_committed_before_keeps_the_per_row_checks(engine):
    with session_scope(engine) as session:
        template = templates_service.create_template(session, SPEC, NOW)
        version = templates_service.freeze_draft(session, template.id, NOW)
        ids = template.id, version.id
    with session_scope(engine) as session:  # another transaction: others may see it
        once, _ = _checked(session, *ids)
        assert not once
        if engine.dialect.name == "postgresql":
            assert _role(session) == "origin"


def test_a_role_that_may_not_switch_triggers_keeps_the_per_row_checks(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's privileges")
    with engine.begin() as conn:
        conn.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sopbot_plain')"
                " THEN CREATE ROLE sopbot_plain NOSUPERUSER; END IF; END $$"
            )
        )
        conn.execute(text("GRANT ALL ON ALL TABLES IN SCHEMA public TO sopbot_plain"))
        conn.execute(text("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO sopbot_plain"))
    with session_scope(engine) as session:
        session.execute(text("SET LOCAL ROLE sopbot_plain"))
        template = templates_service.create_template(session, SPEC, NOW)
        version = templates_service.freeze_draft(session, template.id, NOW)
        once, _ = _checked(session, template.id, version.id)
        assert not once
        assert _role(session) == "origin"
        session.execute(text("SELECT 1"))  # the refusal did not abort the transaction
        session.rollback()
