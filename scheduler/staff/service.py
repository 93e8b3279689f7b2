"""Staff tasks: a remind-mode delivery waits in its staff member's inbox.

At its due time a remind-mode delivery is not sent to the channel one by one:
it becomes ``awaiting_staff`` (待执行) with its rendered content, assigned to
the staff account that owns the customer or group (:func:`open_tasks`, in the
dispatcher's transaction). The staff member hears of it in the next digest
(``scheduler.staff.digest``), opens the inbox and marks it ``done`` (已执行) or
``skipped_by_staff`` with a reason, or postpones it within its deadline;
past the deadline it becomes ``missed`` (:func:`expire_overdue`). Status
changes go through ``scheduler.outbox.transitions``; this module keeps the
task's own facts (``staff_tasks``).

The deadline is the touchpoint's grace period (``expires_at``), or ``hours``
after the due time when the operator set a deadline for the step
(``staff_step_deadlines``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, update
from sqlmodel import Session, col

from audiences.models import Account, Contact, GroupChat
from channels.base import OutboundMessage
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.outbox.repository import chunked, insert_ignore
from scheduler.outbox.transitions import Outcome
from scheduler.staff.models import StaffStepDeadline, StaffTask
from sop_templates.models import SopTemplate, Touchpoint

S = DeliveryStatus
TASKS = StaffTask.__table__  # type: ignore[attr-defined]
SKIP_REASON_LENGTH = 200


class StaffTaskError(ValueError):
    """A staff member's or operator's request that cannot be done; says why."""


def assigned_outcome(message: OutboundMessage) -> Outcome:
    """What the dispatcher records for a remind-mode delivery: waiting in the
    staff member's inbox, with its rendered content."""
    account = message.account_external_id or "?"
    return Outcome(
        S.AWAITING_STAFF,
        f"in staff account {account}'s inbox; announced in the next digest",
        rendered=message.parts,
    )


def open_tasks(session: Session, delivery_ids: Sequence[int], now: datetime) -> int:
    """Record the staff task of each delivery now ``awaiting_staff`` (idempotent)."""
    if not delivery_ids:
        return 0
    rows: list[dict[str, Any]] = []
    for chunk in chunked(list(delivery_ids), 900):
        found = session.execute(
            select(
                Delivery.id,  # type: ignore[call-overload]
                Delivery.template_id,
                Delivery.touchpoint_id,
                Delivery.target_kind,
                Delivery.target_id,
                Delivery.due_at,
                Delivery.expires_at,
                Touchpoint.name,
                func.coalesce(Contact.account_id, GroupChat.owner_account_id),
            )
            .join(Touchpoint, col(Touchpoint.id) == col(Delivery.touchpoint_id))
            .outerjoin(
                Contact,
                and_(col(Delivery.target_kind) == "contact", col(Contact.id) == Delivery.target_id),
            )
            .outerjoin(
                GroupChat,
                and_(col(Delivery.target_kind) == "group", col(GroupChat.id) == Delivery.target_id),
            )
            .where(col(Delivery.id).in_(list(chunk)), col(Delivery.status) == S.AWAITING_STAFF)
        ).all()
        steps = _step_deadlines(session, {r[1] for r in found})
        for (
            delivery_id,
            template_id,
            touchpoint_id,
            kind,
            target_id,
            due_at,
            expires_at,
            step,
            account_id,
        ) in found:
            if account_id is None:
                continue
            hours = steps.get((template_id, step))
            deadline = due_at + timedelta(hours=hours) if hours is not None else expires_at
            rows.append(
                {
                    "delivery_id": delivery_id,
                    "account_id": account_id,
                    "template_id": template_id,
                    "touchpoint_id": touchpoint_id,
                    "target_kind": kind,
                    "target_id": target_id,
                    "assigned_at": now,
                    "deadline_at": deadline,
                }
            )
    return insert_ignore(session, TASKS, rows)


def _step_deadlines(session: Session, template_ids: set[int]) -> dict[tuple[int, str], float]:
    if not template_ids:
        return {}
    rows = session.execute(
        select(
            StaffStepDeadline.template_id, StaffStepDeadline.touchpoint, StaffStepDeadline.hours
        ).where(col(StaffStepDeadline.template_id).in_(sorted(template_ids)))  # type: ignore[call-overload]
    ).all()
    return {(t, name): hours for t, name, hours in rows}


def set_step_deadline(
    session: Session, template_id: int, touchpoint: str, hours: float | None, now: datetime
) -> None:
    """The operator's deadline for a step's future staff tasks (``None``: the
    touchpoint's grace period again)."""
    if hours is not None and not 0 < hours <= 24 * 30:
        raise StaffTaskError("a step deadline is between 0 and 720 hours after the due time")
    row = (
        session.execute(
            select(StaffStepDeadline).where(
                col(StaffStepDeadline.template_id) == template_id,
                col(StaffStepDeadline.touchpoint) == touchpoint,
            )
        )
        .scalars()
        .first()
    )
    if hours is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = StaffStepDeadline(
            template_id=template_id, touchpoint=touchpoint, hours=hours, updated_at=now
        )
    row.hours, row.updated_at = hours, now
    session.add(row)
    session.flush()


# -- the deadline ----------------------------------------------------------------


def expire_overdue(session: Session, now: datetime, limit: int = 5000) -> int:
    """Open tasks past their deadline become ``missed`` (not on time)."""
    ids = list(
        session.execute(
            select(StaffTask.delivery_id)  # type: ignore[call-overload]
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(col(StaffTask.deadline_at) < now, col(Delivery.status) == S.AWAITING_STAFF)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    moved = transitions.staff_miss(
        session, ids, now=now, reason="the staff member did not act before the deadline"
    )
    _update_tasks(session, moved, on_time=False)
    return len(moved)


def _update_tasks(session: Session, ids: Sequence[int] | set[int], **values: Any) -> None:
    for chunk in chunked(sorted(ids), 900):
        session.execute(
            update(StaffTask).where(col(StaffTask.delivery_id).in_(list(chunk))).values(**values)
        )


# -- the staff member's actions ---------------------------------------------------


def _own_open(
    session: Session, account_id: int, delivery_ids: Sequence[int]
) -> dict[int, StaffTask]:
    """The tasks among ``delivery_ids`` that are ``account_id``'s and still open;
    any other id is refused (another staff member's, finished, unknown)."""
    ids = sorted({int(i) for i in delivery_ids})
    if not ids:
        raise StaffTaskError("no task chosen")
    found = {
        t.delivery_id: t
        for t in session.execute(
            select(StaffTask)
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(
                col(StaffTask.delivery_id).in_(ids),
                col(StaffTask.account_id) == account_id,
                col(Delivery.status) == S.AWAITING_STAFF,
            )
        ).scalars()
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise StaffTaskError(
            "a chosen task is not an open task of yours any more (done, skipped, expired "
            "or someone else's)"
        )
    return found


def mark_done(session: Session, account_id: int, delivery_ids: Sequence[int], now: datetime) -> int:
    """已发送: the staff member sent it; on time when before the deadline."""
    tasks = _own_open(session, account_id, delivery_ids)
    moved = transitions.staff_done(
        session, list(tasks), acted_at=now, reason="sent by the staff member"
    )
    on_time = {i for i in moved if now <= tasks[i].deadline_at}
    _update_tasks(session, on_time, acted_at=now, on_time=True)
    _update_tasks(session, moved - on_time, acted_at=now, on_time=False)
    return len(moved)


def skip(
    session: Session, account_id: int, delivery_ids: Sequence[int], reason: str, now: datetime
) -> int:
    """跳过（原因）: the staff member will not send it, and says why."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise StaffTaskError("say why the task is skipped")
    if len(reason) > SKIP_REASON_LENGTH:
        raise StaffTaskError("the reason is longer than 200 characters")
    tasks = _own_open(session, account_id, delivery_ids)
    moved = transitions.staff_skip(
        session, list(tasks), acted_at=now, reason=f"skipped by the staff member: {reason}"
    )
    _update_tasks(session, moved, acted_at=now, skip_reason=reason)
    return len(moved)


def postpone(
    session: Session, account_id: int, delivery_ids: Sequence[int], until: datetime, now: datetime
) -> int:
    """稍后提醒: listed and announced again at ``until``, which must fall before
    the task's deadline."""
    if until <= now:
        raise StaffTaskError("the reminder time must be in the future")
    tasks = _own_open(session, account_id, delivery_ids)
    late = [t for t in tasks.values() if until >= t.deadline_at]
    if late:
        raise StaffTaskError("the reminder time must be before the task's deadline")
    _update_tasks(session, set(tasks), remind_at=until, announced_at=None, nudged_at=None)
    return len(tasks)


# -- the operator's controls ------------------------------------------------------


def reassign(session: Session, from_account_id: int, to_account_id: int, now: datetime) -> int:
    """Move every open task of a staff member to another (someone left, or
    their customers were transferred); the new owner hears in the next digest."""
    if from_account_id == to_account_id:
        raise StaffTaskError("choose another staff account to hand the tasks to")
    if session.get(Account, to_account_id) is None:
        raise StaffTaskError("the staff account to hand the tasks to does not exist")
    ids = list(
        session.execute(
            select(StaffTask.delivery_id)  # type: ignore[call-overload]
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(
                col(StaffTask.account_id) == from_account_id,
                col(Delivery.status) == S.AWAITING_STAFF,
            )
        ).scalars()
    )
    _update_tasks(
        session, ids, account_id=to_account_id, announced_at=None, nudged_at=None, remind_at=None
    )
    return len(ids)


def extend_deadline(
    session: Session, delivery_ids: Sequence[int], deadline: datetime, now: datetime
) -> int:
    """Give open tasks a new deadline (later than now)."""
    if deadline <= now:
        raise StaffTaskError("the new deadline must be in the future")
    ids = sorted({int(i) for i in delivery_ids})
    open_ids = list(
        session.execute(
            select(StaffTask.delivery_id)  # type: ignore[call-overload]
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(col(StaffTask.delivery_id).in_(ids), col(Delivery.status) == S.AWAITING_STAFF)
        ).scalars()
    )
    missing = sorted(set(ids) - set(open_ids))
    if missing:
        raise StaffTaskError("a chosen task is not open any more (or does not exist)")
    _update_tasks(session, open_ids, deadline_at=deadline, nudged_at=None)
    return len(open_ids)


# -- reading ----------------------------------------------------------------------


@dataclass
class InboxTask:
    delivery_id: int
    target_kind: str
    target_name: str
    target_external_id: str
    parts: list[dict[str, Any]]
    due_at: datetime
    deadline_at: datetime
    remind_at: datetime | None
    status: str
    skip_reason: str | None
    on_time: bool | None
    acted_at: datetime | None
    soon: bool = False
    pinned: bool = False  # the customer of the chat the sidebar was opened from


@dataclass
class InboxStep:
    template_name: str
    step: str
    tasks: list[InboxTask] = field(default_factory=list)


@dataclass
class Inbox:
    account_id: int
    account_name: str
    open: list[InboxStep]
    finished: list[InboxTask]
    open_count: int
    pinned_count: int


def inbox(
    session: Session,
    account_id: int,
    now: datetime,
    *,
    nudge: timedelta,
    day_start: datetime,
    pinned_external_id: str | None = None,
) -> Inbox:
    """A staff member's open tasks grouped by SOP and step (the customer of the
    chat ``pinned_external_id`` first, then by deadline), and what they
    finished since ``day_start`` (done, skipped, missed)."""
    rows = session.execute(
        select(StaffTask, Delivery, SopTemplate.name, Touchpoint.name)  # type: ignore[call-overload]
        .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
        .join(SopTemplate, col(SopTemplate.id) == col(StaffTask.template_id))
        .join(Touchpoint, col(Touchpoint.id) == col(StaffTask.touchpoint_id))
        .where(
            col(StaffTask.account_id) == account_id,
            (col(Delivery.status) == S.AWAITING_STAFF) | (col(Delivery.finished_at) >= day_start),
        )
        .order_by(col(StaffTask.deadline_at), col(StaffTask.delivery_id))
    ).all()
    names = _target_names(session, [(t.target_kind, t.target_id) for t, *_ in rows])
    steps: dict[tuple[str, str], InboxStep] = {}
    finished: list[InboxTask] = []
    pinned_count = 0
    for task, delivery, template_name, step in rows:
        name, external = names.get((task.target_kind, task.target_id), ("", ""))
        item = InboxTask(
            delivery_id=task.delivery_id,
            target_kind=task.target_kind,
            target_name=name or external,
            target_external_id=external,
            parts=list(delivery.rendered or []),
            due_at=delivery.due_at,
            deadline_at=task.deadline_at,
            remind_at=task.remind_at if task.remind_at and task.remind_at > now else None,
            status=delivery.status,
            skip_reason=task.skip_reason,
            on_time=task.on_time,
            acted_at=task.acted_at,
            soon=task.deadline_at - now <= nudge,
            pinned=bool(pinned_external_id) and external == pinned_external_id,
        )
        if delivery.status != S.AWAITING_STAFF:
            finished.append(item)
            continue
        pinned_count += item.pinned
        steps.setdefault((template_name, step), InboxStep(template_name, step)).tasks.append(item)
    groups = list(steps.values())
    for group in groups:
        # the chat's customer first, then postponed ones last, by deadline
        group.tasks.sort(key=lambda t: (not t.pinned, t.remind_at is not None, t.deadline_at))
    groups.sort(key=lambda g: (not any(t.pinned for t in g.tasks), g.tasks[0].deadline_at))
    account = session.get(Account, account_id)
    finished.sort(key=lambda t: t.acted_at or t.deadline_at, reverse=True)
    return Inbox(
        account_id=account_id,
        account_name=(account.name or account.external_id) if account else str(account_id),
        open=groups,
        finished=finished,
        open_count=sum(len(g.tasks) for g in groups),
        pinned_count=pinned_count,
    )


def _target_names(
    session: Session, keys: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str, str]]:
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for kind, model in (("contact", Contact), ("group", GroupChat)):
        ids = sorted({i for k, i in keys if k == kind})
        for chunk in chunked(ids, 900):
            for target_id, name, external in session.execute(
                select(model.id, model.name, model.external_id).where(  # type: ignore[call-overload]
                    col(model.id).in_(list(chunk))
                )
            ).all():
                out[(kind, target_id)] = (name, external)
    return out


@dataclass
class OverdueRow:
    account_id: int
    account_name: str
    open: int
    due_soon: int
    missed: int


def overdue_by_account(
    session: Session, now: datetime, *, since: datetime, soon: timedelta, limit: int = 10
) -> list[OverdueRow]:
    """Per staff member: open tasks, those due within ``soon``, and tasks missed
    since ``since`` (the dashboard's overdue list), most missed first."""
    open_rows = session.execute(
        select(
            StaffTask.account_id,  # type: ignore[call-overload]
            func.count(),
            func.sum(case((col(StaffTask.deadline_at) <= now + soon, 1), else_=0)),
        )
        .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
        .where(col(Delivery.status) == S.AWAITING_STAFF)
        .group_by(StaffTask.account_id)
    ).all()
    missed_rows = session.execute(
        select(StaffTask.account_id, func.count())  # type: ignore[call-overload]
        .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
        .where(col(Delivery.status) == S.MISSED, col(Delivery.finished_at) >= since)
        .group_by(StaffTask.account_id)
    ).all()
    table: dict[int, list[int]] = {}
    for account_id, n, soon_n in open_rows:
        table[account_id] = [int(n), int(soon_n or 0), 0]
    for account_id, n in missed_rows:
        table.setdefault(account_id, [0, 0, 0])[2] = int(n)
    names = {
        a.id: a.name or a.external_id
        for a in session.execute(
            select(Account).where(col(Account.id).in_(sorted(table) or [0]))
        ).scalars()
    }
    ranked = sorted(table.items(), key=lambda kv: (-kv[1][2], -kv[1][1], -kv[1][0], kv[0]))
    return [
        OverdueRow(a, names.get(a, str(a)), n, soon_n, missed)
        for a, (n, soon_n, missed) in ranked
        if missed or soon_n
    ][:limit]
