"""The delivery state machine: every transition in the table moves a row as
the table says, and nothing else moves it (wrong start status, wrong lease
owner, a target status the table does not list)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from sqlalchemy import update
from sqlmodel import Session, col

from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.outbox.transitions import TABLE, Outcome, TransitionRefused, held
from sopbot.db import session_scope

S = DeliveryStatus
T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
OWNER = "w1"
TASK = "task-1"

Driver = Callable[[Session, int, str], int]


def _outcome(to: str) -> Outcome:
    if to == S.SCHEDULED:
        return Outcome(to, "retrying", run_at=NOW + timedelta(minutes=5))
    return Outcome(to, f"now {to}", provider_message_id="p-1" if to == S.SENT else None)


def _claim(session: Session, row_id: int, to: str) -> int:
    rows = transitions.claim(
        session, now=NOW, owner=OWNER, lease_until=NOW + timedelta(minutes=2), limit=10
    )
    return len(rows)


def _miss(session: Session, row_id: int, to: str) -> int:
    session.execute(
        update(Delivery)
        .where(col(Delivery.id) == row_id)
        .values(expires_at=NOW - timedelta(seconds=1), attempts=1 if to == S.FAILED else 0)
    )
    overdue = transitions.miss_overdue(session, now=NOW)
    if to == S.MISSED:
        overdue += transitions.settle(
            session, owner=OWNER, outcomes={row_id: Outcome(S.MISSED, "late")}, now=NOW
        )
    return overdue


def _settle(session: Session, row_id: int, to: str) -> int:
    return transitions.settle(session, owner=OWNER, outcomes={row_id: _outcome(to)}, now=NOW)


DRIVERS: dict[str, Driver] = {
    "claim": _claim,
    "renew": lambda s, i, to: transitions.renew(
        s, owner=OWNER, ids=[i], lease_until=NOW + timedelta(minutes=5)
    ),
    "mark_sending": lambda s, i, to: len(
        transitions.mark_sending(s, owner=OWNER, ids=[i], lease_until=NOW + timedelta(minutes=5))
    ),
    "skip": _settle,
    "fail": _settle,
    "defer": _settle,
    "miss": _miss,
    "record_outcome": lambda s, i, to: transitions._write(
        s, "record_outcome", OWNER, {i: _outcome(to)}, NOW
    ),
    "resolve_unknown": lambda s, i, to: transitions.resolve_unknown(
        s, owner=OWNER, outcomes={i: _outcome(to)}, now=NOW
    ),
    "release": lambda s, i, to: transitions.release(s, owner=OWNER, ids=[i]),
    "unmark": lambda s, i, to: transitions.unmark(s, owner=OWNER, ids=[i]),
    "reap_claimed": lambda s, i, to: transitions.reap_claimed(s, now=NOW),
    "reap_resend": lambda s, i, to: transitions.reap_resend(s, now=NOW, channels=["mock"]),
    "reap_sending": lambda s, i, to: transitions.reap_sending(s, now=NOW),
    "cancel": lambda s, i, to: transitions.cancel(s, reason="archived", now=NOW, delivery_ids=[i]),
    "repoint": lambda s, i, to: transitions.repoint(s, i, {"status": to, "reason": "moved"}),
    "task_failed": lambda s, i, to: transitions.task_failed(
        s, TASK, [{"b_id": i, "b_reason": "not a friend"}], NOW
    ),
    "task_expired": lambda s, i, to: transitions.task_expired(s, TASK, [i], "nobody", NOW),
    "task_skipped": lambda s, i, to: transitions.task_skipped(
        s, TASK, [{"b_id": i, "b_reason": "quota used"}], NOW
    ),
    "task_cancelled": lambda s, i, to: transitions.task_cancelled(
        s, TASK, [{"b_id": i, "b_reason": "recalled"}], NOW
    ),
    "assign_staff": _settle,
    "staff_done": lambda s, i, to: len(
        transitions.staff_done(s, [i], acted_at=NOW, reason="sent by the staff member")
    ),
    "staff_skip": lambda s, i, to: len(
        transitions.staff_skip(s, [i], acted_at=NOW, reason="customer left")
    ),
    "staff_miss": lambda s, i, to: len(transitions.staff_miss(s, [i], now=NOW, reason="late")),
}

ALLOWED = [
    (name, start, to)
    for name, moves in TABLE.items()
    for start, targets in moves.items()
    for to in sorted(targets)
]
FORBIDDEN = [
    (name, start, sorted(set().union(*moves.values()))[0])
    for name, moves in TABLE.items()
    for start in S.ALL
    if start not in moves
]


@pytest.fixture
def row(engine) -> int:
    """One delivery (the others of its enrollment out of the way)."""
    template_id = publish(engine, new_friend_spec(), T0)
    contact = add_contact(engine, "wm_1", "甲", T0)
    enroll(engine, template_id, [(contact, T0)], T0)
    first, *others = sorted(d.id for d in deliveries(engine))
    with session_scope(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(others))
            .values(status=S.CANCELLED, finished_at=T0)
        )
    return first


def _put(engine, row_id: int, status: str, owner: str | None = OWNER) -> None:
    """The row in ``status``, held by ``owner`` under a lease that expired."""
    with session_scope(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) == row_id)
            .values(
                status=status,
                lease_owner=owner,
                lease_expires_at=NOW - timedelta(seconds=1),
                run_at=NOW - timedelta(minutes=1),
                expires_at=NOW + timedelta(hours=1),
                provider_message_id=TASK,
                attempts=0,
            )
        )


def _run(engine, name: str, row_id: int, to: str) -> tuple[int, str]:
    with session_scope(engine) as session:
        touched = DRIVERS[name](session, row_id, to)
    (after,) = [d for d in deliveries(engine) if d.id == row_id]
    return touched, after.status


def test_every_transition_has_a_driver_and_every_status_is_known():
    assert set(DRIVERS) == set(TABLE)
    for moves in TABLE.values():
        for start, targets in moves.items():
            assert start in S.ALL and targets <= set(S.ALL)


@pytest.mark.parametrize(("name", "start", "to"), ALLOWED, ids=lambda v: str(v))
def test_each_allowed_transition_moves_the_row(engine, row, name, start, to):
    _put(engine, row, start)
    touched, status = _run(engine, name, row, to)
    assert (touched, status) == (1, to)


@pytest.mark.parametrize(("name", "start", "to"), FORBIDDEN, ids=lambda v: str(v))
def test_a_transition_from_a_status_it_does_not_start_from_touches_nothing(
    engine, row, name, start, to
):
    _put(engine, row, start)
    touched, status = _run(engine, name, row, to)
    assert (touched, status) == (0, start)


@pytest.mark.parametrize(
    ("name", "start"),
    [
        ("renew", S.CLAIMED),
        ("mark_sending", S.CLAIMED),
        ("record_outcome", S.SENDING),
        ("resolve_unknown", S.UNKNOWN),
        ("release", S.CLAIMED),
        ("unmark", S.SENDING),
        ("skip", S.CLAIMED),
    ],
)
def test_a_worker_cannot_move_a_row_another_worker_holds(engine, row, name, start):
    _put(engine, row, start, owner="w2")
    to = sorted(TABLE[name][start])[0]
    touched, status = _run(engine, name, row, to)
    assert (touched, status) == (0, start)


def test_a_status_the_table_does_not_list_is_refused_before_any_sql(engine, row):
    _put(engine, row, S.SENDING)
    with session_scope(engine) as session:
        with pytest.raises(TransitionRefused, match="cannot move a row to 'scheduled'"):
            transitions.check("reap_sending", S.SCHEDULED)
        with pytest.raises(TransitionRefused, match="cannot be settled as 'sent'"):
            transitions.settle(session, owner=OWNER, outcomes={row: _outcome(S.SENT)}, now=NOW)
        with pytest.raises(TransitionRefused, match="'repoint' cannot move a row to 'sent'"):
            transitions.repoint(session, row, {"status": S.SENT})
        with pytest.raises(TransitionRefused, match="repoint cannot change lease_owner"):
            transitions.repoint(session, row, {"lease_owner": "w2"})
        with pytest.raises(TransitionRefused, match="no delivery transition named"):
            transitions.check("teleport", S.SENT)
    assert [d.status for d in deliveries(engine) if d.id == row] == [S.SENDING]


def test_a_late_outcome_of_the_owner_resolves_unknown_with_the_provider_id(engine, row):
    _put(engine, row, S.SENDING)
    with session_scope(engine) as session:
        assert transitions.reap_sending(session, now=NOW) == 1
    with session_scope(engine) as session:
        outcome = Outcome(S.SENT, None, "provider-42", sent=True)
        assert transitions.record_outcome(session, owner=OWNER, outcomes={row: outcome}, now=NOW)
    (after,) = [d for d in deliveries(engine) if d.id == row]
    assert (after.status, after.provider_message_id, after.reason) == (S.SENT, "provider-42", None)
    assert after.lease_owner is None


def test_no_other_module_changes_a_delivery_s_status():
    """The state machine (the package ``scheduler.outbox.transitions``) is the
    only writer of ``deliveries.status``: no other product module issues an
    UPDATE on the deliveries table."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    writes = re.compile(r"update\(\s*(Delivery|DELIVERIES)\b|UPDATE\s+deliveries\b", re.I)
    offenders = []
    for package in ("scheduler", "audiences", "sop_templates", "channels", "api", "sopbot"):
        for path in (root / package).rglob("*.py"):
            if path.parent.name == "transitions" and path.parent.parent.name == "outbox":
                continue
            if writes.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


@pytest.fixture
def rows(engine) -> list[int]:
    """Eight deliveries of four contacts (the rest of their enrollments out of the way)."""
    template_id = publish(engine, new_friend_spec(), T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(8)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    by_enrollment: dict[int, list[int]] = {}
    for d in deliveries(engine):
        by_enrollment.setdefault(d.enrollment_id, []).append(d.id)
    firsts = sorted(min(ids) for ids in by_enrollment.values())
    with session_scope(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).not_in(firsts))
            .values(status=S.CANCELLED, finished_at=T0)
        )
    return firsts


@pytest.mark.parametrize("one_statement", [True, False], ids=["update-from", "per-row"])
def test_a_batch_of_outcomes_writes_only_the_rows_its_fence_admits(
    engine, rows, monkeypatch, one_statement
):
    """One write for a whole batch (one statement on PostgreSQL, and on SQLite
    3.33+; per row on older SQLite) still checks every row: the owner's sending
    rows get their outcome, its reaped unknown rows the late truth, and every
    other row is left exactly as it was."""
    monkeypatch.setattr(held, "UPDATE_FROM", one_statement)
    mine, retry, theirs, claimed, done, reaped, reaped_theirs, orphan = rows
    _put(engine, mine, S.SENDING)
    _put(engine, retry, S.SENDING)
    _put(engine, theirs, S.SENDING, owner="w2")
    _put(engine, claimed, S.CLAIMED)
    _put(engine, done, S.SENT, owner=None)
    _put(engine, reaped, S.UNKNOWN)
    _put(engine, reaped_theirs, S.UNKNOWN, owner="w2")
    _put(engine, orphan, S.SENDING, owner=None)
    before = {d.id: d for d in deliveries(engine)}
    later = NOW + timedelta(minutes=5)
    sent = [{"text": "客户，你好"}]
    outcomes = {i: Outcome(S.SENT, None, f"p-{i}", rendered=sent, sent=True) for i in rows}
    outcomes[retry] = Outcome(S.SCHEDULED, "attempt 1 failed, retrying", run_at=later)
    with session_scope(engine) as session:
        written = transitions.record_outcome(session, owner=OWNER, outcomes=outcomes, now=NOW)
    after = {d.id: d for d in deliveries(engine)}

    assert written == 3
    for i in (mine, reaped):
        assert (after[i].status, after[i].provider_message_id, after[i].rendered) == (
            S.SENT,
            f"p-{i}",
            sent,
        )
        assert (after[i].sent_at, after[i].finished_at, after[i].lease_owner) == (NOW, NOW, None)
        assert (after[i].run_at, after[i].expires_at) == (before[i].run_at, before[i].expires_at)
    assert (after[retry].status, after[retry].reason, after[retry].run_at) == (
        S.SCHEDULED,
        "attempt 1 failed, retrying",
        later,
    )
    assert (after[retry].sent_at, after[retry].finished_at, after[retry].lease_owner) == (
        None,
        None,
        None,
    )
    assert after[retry].expires_at == before[retry].expires_at
    for i in (theirs, claimed, done, reaped_theirs, orphan):
        assert after[i].model_dump() == before[i].model_dump(), i


def test_a_batch_settled_before_sending_moves_only_the_owner_s_claimed_rows(engine, rows):
    mine, moved, theirs, sending, *_ = rows
    _put(engine, mine, S.CLAIMED)
    _put(engine, moved, S.CLAIMED)
    _put(engine, theirs, S.CLAIMED, owner="w2")
    _put(engine, sending, S.SENDING)
    before = {d.id: d for d in deliveries(engine)}
    quiet_ends = NOW + timedelta(hours=8)
    outcomes = {
        mine: Outcome(S.SKIPPED, "contact left"),
        moved: Outcome(S.SCHEDULED, "quiet hours", run_at=quiet_ends, expires_at=quiet_ends),
        theirs: Outcome(S.SKIPPED, "contact left"),
        sending: Outcome(S.FAILED, "render error"),
    }
    with session_scope(engine) as session:
        assert transitions.settle(session, owner=OWNER, outcomes=outcomes, now=NOW) == 2
    after = {d.id: d for d in deliveries(engine)}
    assert (after[mine].status, after[mine].finished_at, after[mine].lease_owner) == (
        S.SKIPPED,
        NOW,
        None,
    )
    assert (after[moved].status, after[moved].run_at, after[moved].expires_at) == (
        S.SCHEDULED,
        quiet_ends,
        quiet_ends,
    )
    assert after[moved].finished_at is None
    for i in (theirs, sending):
        assert after[i].model_dump() == before[i].model_dump(), i
