"""Transitions the flows decide (archive, exit, version moves), mass-send
task results and staff tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, update
from sqlmodel import Session, col

from scheduler.outbox import repository
from scheduler.outbox.models import (
    Delivery,
    clip_reason,
)
from scheduler.outbox.transitions.machine import (
    S,
    TransitionRefused,
    _fence,
    check,
)
from sopbot.db import is_sqlite, rowcount
from sopbot.sql import unindexed

# -- decisions of the flows (archive, exit, version moves) ----------------------


def cancel(
    session: Session,
    *,
    reason: str,
    now: datetime,
    template_id: int | None = None,
    enrollment_ids: Sequence[int] | None = None,
    delivery_ids: Sequence[int] | None = None,
) -> int:
    """cancel: rows not yet handed to a channel (scheduled or claimed) →
    cancelled, selected by template, enrollments and/or delivery ids."""
    # Rows named by enrollment or id are found through those, whatever else
    # narrows them (on SQLite the template would be looked up by index too).
    named = enrollment_ids is not None or delivery_ids is not None
    conditions = _fence("cancel", None, by_id=session if named else None)
    if template_id is not None:
        template = unindexed(col(Delivery.template_id), named and is_sqlite(session.get_bind()))
        conditions.append(template == template_id)
    if enrollment_ids is not None:
        conditions.append(col(Delivery.enrollment_id).in_(list(enrollment_ids)))
    if delivery_ids is not None:
        conditions.append(col(Delivery.id).in_(list(delivery_ids)))
    stmt = (
        update(Delivery)
        .where(and_(*conditions))
        .values(
            status=S.CANCELLED,
            reason=clip_reason(reason),
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return rowcount(session.execute(stmt))


_REPOINTABLE = {"touchpoint_id", "version_id", "channel", "mode", "due_at", "run_at"}
_REPOINTABLE |= {"expires_at", "status", "reason", "finished_at"}


def repoint(session: Session, delivery_id: int, values: Mapping[str, Any]) -> int:
    """repoint: move a still-scheduled row to another version's touchpoint (due
    times recomputed; ``status`` may become skipped). A claim may race this:
    then the row goes out on the version it was claimed with (0 rows)."""
    unknown = set(values) - _REPOINTABLE
    if unknown:
        raise TransitionRefused(f"repoint cannot change {', '.join(sorted(unknown))}")
    if "status" in values:
        check("repoint", values["status"])
    stmt = (
        update(Delivery)
        .where(col(Delivery.id) == delivery_id, *_fence("repoint", None))
        .values(**values)
    )
    return rowcount(session.execute(stmt))


# -- mass-send tasks (scheduler.outbox.tasks) -------------------------------------


def _task_fence(task_id: str) -> ColumnElement[bool]:
    return and_(
        col(Delivery.status) == S.SENT,
        col(Delivery.provider_message_id) == task_id,
    )


def confirm_task(session: Session, task_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """A staff member confirmed the mass send: the sent row's reason and
    ``sent_at`` become the platform's (no status change)."""
    if not rows:
        return
    d = repository.DELIVERIES.c
    session.connection().execute(
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), _task_fence(task_id))
        .values(reason=bindparam("b_reason"), sent_at=bindparam("b_sent_at", type_=d.sent_at.type)),
        list(rows),
    )


def task_failed(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_failed: sent → failed with the platform's reason (``b_id``, ``b_reason``)."""
    if not rows:
        return 0
    check("task_failed", S.FAILED)
    d = repository.DELIVERIES.c
    stmt = (
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), d.status == S.SENT, d.provider_message_id == task_id)
        .values(status=S.FAILED, reason=bindparam("b_reason"), sent_at=None, finished_at=now)
    )
    return repository.execute_many(session.connection(), stmt, rows)


def task_expired(
    session: Session, task_id: str, ids: Sequence[int], reason: str, now: datetime
) -> int:
    """task_expired: sent → unknown when nobody confirmed the task in time."""
    check("task_expired", S.UNKNOWN)
    count = 0
    for chunk in repository.chunked(list(ids), 900):
        count += rowcount(
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(list(chunk)), _task_fence(task_id))
                .values(status=S.UNKNOWN, reason=clip_reason(reason), finished_at=now)
            )
        )
    return count


def task_skipped(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_skipped: sent → skipped with the platform's reason (``b_id``, ``b_reason``)."""
    return _task_settle(session, "task_skipped", S.SKIPPED, task_id, rows, now)


def task_cancelled(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_cancelled: sent → cancelled, the task recalled before confirmation."""
    return _task_settle(session, "task_cancelled", S.CANCELLED, task_id, rows, now)


def _task_settle(
    session: Session,
    name: str,
    status: str,
    task_id: str,
    rows: Sequence[dict[str, Any]],
    now: datetime,
) -> int:
    if not rows:
        return 0
    check(name, status)
    d = repository.DELIVERIES.c
    stmt = (
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), d.status == S.SENT, d.provider_message_id == task_id)
        .values(status=status, reason=bindparam("b_reason"), sent_at=None, finished_at=now)
    )
    return repository.execute_many(session.connection(), stmt, rows)


# -- staff tasks (scheduler.staff) ------------------------------------------------


def _staff_move(
    session: Session, name: str, to: str, ids: Sequence[int], values: dict[str, Any]
) -> set[int]:
    check(name, to)
    moved: set[int] = set()
    for chunk in repository.chunked(list(ids), 900):
        stmt = (
            update(Delivery)
            .where(col(Delivery.id).in_(list(chunk)), *_fence(name, None, by_id=session))
            .values(status=to, **values)
            .returning(col(Delivery.id))
        )
        moved.update(session.execute(stmt).scalars())
    return moved


def staff_done(
    session: Session, ids: Sequence[int], *, acted_at: datetime, reason: str
) -> set[int]:
    """staff_done: awaiting_staff → done; ``sent_at`` is when the staff member
    said they sent it (frequency caps count it). Returns the ids moved."""
    return _staff_move(
        session,
        "staff_done",
        S.DONE,
        ids,
        {"sent_at": acted_at, "finished_at": acted_at, "reason": clip_reason(reason)},
    )


def staff_skip(
    session: Session, ids: Sequence[int], *, acted_at: datetime, reason: str
) -> set[int]:
    """staff_skip: awaiting_staff → skipped_by_staff with the staff member's reason."""
    return _staff_move(
        session,
        "staff_skip",
        S.SKIPPED_BY_STAFF,
        ids,
        {"finished_at": acted_at, "reason": clip_reason(reason)},
    )


def staff_miss(session: Session, ids: Sequence[int], *, now: datetime, reason: str) -> set[int]:
    """staff_miss: awaiting_staff → missed once the task's deadline passed."""
    return _staff_move(
        session, "staff_miss", S.MISSED, ids, {"finished_at": now, "reason": clip_reason(reason)}
    )
