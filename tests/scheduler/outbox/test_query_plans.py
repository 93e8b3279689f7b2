"""SQLite plans the outbox's writes without statistics (sopbot never runs
ANALYZE), and then prefers the status index to anything else. A write that
names its rows (the claim's batch, a wave's ids, one contact's exit) must find
them by id or enrollment, not read every row in that status: with a backlog of
1,000,000 scheduled rows, each claim read all of them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from sqlalchemy import event
from sqlalchemy.engine import Engine

from scheduler.outbox import transitions
from scheduler.outbox.transitions import Outcome
from sopbot.db import is_sqlite, session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
OWNER = "w1"
# The status index read for one status, or a list of them, with no range on
# run_at: every row in that status.
WHOLE_STATUS = "ix_deliveries_status_run_at (status=?)"


@pytest.fixture
def sqlite_engine(engine: Engine) -> Engine:
    if not is_sqlite(engine):
        pytest.skip("PostgreSQL plans with statistics")
    return engine


@pytest.fixture
def written(sqlite_engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement that writes deliveries, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE DELIVERIES"):
            seen.append((statement, parameters))

    event.listen(sqlite_engine, "before_cursor_execute", capture)
    yield seen
    event.remove(sqlite_engine, "before_cursor_execute", capture)


def _plans(engine: Engine, statements: list[tuple[str, Any]]) -> list[tuple[str, list[str]]]:
    out = []
    with engine.connect() as conn:
        for statement, parameters in statements:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            out.append((statement.split("WHERE", 1)[-1][:120], [row[3] for row in plan]))
    return out


def _scans(plans: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [(where, plan) for where, plan in plans if any(WHOLE_STATUS in p for p in plan)]


def test_the_claim_and_a_batch_s_writes_find_their_rows_by_id(sqlite_engine, written):
    template_id = publish(sqlite_engine, new_friend_spec(), T0)
    contacts = [add_contact(sqlite_engine, f"wm_{i}", f"客户{i}", T0) for i in range(6)]
    enroll(sqlite_engine, template_id, [(c, T0) for c in contacts], T0)
    written.clear()
    lease = NOW + timedelta(minutes=2)
    with session_scope(sqlite_engine, immediate=True) as session:
        rows = transitions.claim(session, now=NOW, owner=OWNER, lease_until=lease, limit=4)
    ids = [r.id for r in rows]
    assert len(ids) == 4
    with session_scope(sqlite_engine) as session:
        transitions.renew(session, owner=OWNER, ids=ids, lease_until=lease)
        sending = transitions.mark_sending(session, owner=OWNER, ids=ids[:3], lease_until=lease)
        assert sending == set(ids[:3])
        transitions.unmark(session, owner=OWNER, ids=ids[2:3])
        transitions.record_outcome(
            session,
            owner=OWNER,
            outcomes={i: Outcome("sent", sent=True) for i in ids[:2]},
            now=NOW,
        )
        transitions.release(session, owner=OWNER, ids=ids[3:])
    assert len(written) >= 7
    assert _scans(_plans(sqlite_engine, written)) == []


def test_exits_cancel_their_rows_through_the_enrollments(sqlite_engine, written):
    template_id = publish(sqlite_engine, new_friend_spec(), T0)
    contacts = [add_contact(sqlite_engine, f"wm_{i}", f"客户{i}", T0) for i in range(6)]
    enroll(sqlite_engine, template_id, [(c, T0) for c in contacts], T0)
    leaving = sorted({d.enrollment_id for d in deliveries(sqlite_engine)})[:5]
    one = deliveries(sqlite_engine)[-1].id
    written.clear()
    with session_scope(sqlite_engine) as session:
        assert transitions.cancel(session, reason="退出", now=T0, enrollment_ids=leaving)
        assert (
            transitions.cancel(
                session, reason="退出", now=T0, template_id=template_id, enrollment_ids=[0]
            )
            == 0
        )
        assert transitions.cancel(session, reason="改版", now=T0, delivery_ids=[one]) == 1
    plans = _plans(sqlite_engine, written)
    assert len(plans) == 3
    assert _scans(plans) == []
    # Named rows are found through the enrollment (or id), not the template.
    assert not any("ix_deliveries_template" in p for _, plan in plans for p in plan)
