"""Upkeep of open WeCom mass-send tasks (the job ``sopbot:wecom-task-upkeep``).

* **Recall:** when every recipient of a task still awaiting the staff member's
  confirmation has left the SOP (its enrollment exited, e.g. a tag exit or the
  friend deleted), the task is cancelled with ``cancel_groupmsg_send`` and its
  deliveries become ``cancelled`` with the reason. When only some have left, a
  WeCom task cannot be recalled for part of its customers: the task says so in
  its ``last_error`` and goes on.
* **Nudges:** an unconfirmed task is reminded (``remind_groupmsg_send``) at the
  hours after creation the channel sets in ``remind_after_hours``; WeCom
  allows 3 a day per task, which the config validation and the answer's
  errcode both hold. A run that finds several nudges due sends one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from channels import wecom_contacts
from channels.base import ChannelError
from channels.models import ChannelTask, TaskState
from channels.wecom import WeComAdapter, WeComAPIError
from scheduler.jobs import Job, JobContext
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, Enrollment, EnrollmentStatus
from sopbot.db import reader, session_scope

log = logging.getLogger("sopbot.wecom_tasks")

JOB_TASK_UPKEEP = "sopbot:wecom-task-upkeep"


@dataclass
class UpkeepStats:
    cancelled: int = 0
    not_recallable: int = 0
    reminded: int = 0
    errors: int = 0


def _open_tasks(ctx: JobContext) -> list[ChannelTask]:
    with Session(reader(ctx.engine)) as session:
        return list(
            session.execute(
                select(ChannelTask).where(
                    col(ChannelTask.state) == TaskState.AWAITING,
                    ~col(ChannelTask.provider_task_id).startswith("moment:"),
                )
            ).scalars()
        )


def _left(ctx: JobContext, delivery_ids: list[int]) -> tuple[list[int], str | None]:
    """The deliveries whose enrollment exited, and one exit reason."""
    with Session(reader(ctx.engine)) as session:
        rows = session.execute(
            select(Delivery.id, Enrollment.exit_reason)  # type: ignore[call-overload]
            .join(Enrollment, col(Enrollment.id) == col(Delivery.enrollment_id))
            .where(
                col(Delivery.id).in_(delivery_ids),
                col(Enrollment.status) == EnrollmentStatus.EXITED,
            )
        ).all()
    return [r.id for r in rows], next((r.exit_reason for r in rows if r.exit_reason), None)


async def upkeep(ctx: JobContext) -> UpkeepStats:
    """Recall tasks nobody is left to receive; nudge unconfirmed ones on schedule."""
    stats = UpkeepStats()
    adapters: dict[str, WeComAdapter | None] = {}
    # Database work in threads: the event loop is shared with the web pages.
    for task in await asyncio.to_thread(_open_tasks, ctx):
        if task.channel not in adapters:
            try:
                adapter = ctx.channels.get(task.channel)
            except ChannelError:
                adapter = None
            adapters[task.channel] = adapter if isinstance(adapter, WeComAdapter) else None
        adapter = adapters[task.channel]
        if adapter is None or not task.delivery_ids:
            continue
        now = ctx.clock.now()
        left, why = await asyncio.to_thread(_left, ctx, list(task.delivery_ids))
        try:
            if left and len(left) == len(task.delivery_ids):
                await wecom_contacts.cancel_task(adapter, task.provider_task_id)
                await asyncio.to_thread(_cancelled, ctx, task, why, now)
                stats.cancelled += 1
                continue
            if left:
                note = (
                    f"{len(left)} of {len(task.delivery_ids)} recipients left the SOP; WeCom "
                    "cannot recall a task for part of its customers"
                )
                if task.last_error != note:
                    await asyncio.to_thread(_update, ctx, task, last_error=note)
                    stats.not_recallable += 1
            if _nudge_due(adapter, task, now):
                await wecom_contacts.remind_task(adapter, task.provider_task_id)
                await asyncio.to_thread(
                    _update, ctx, task, reminders=_due_count(adapter, task, now), reminded_at=now
                )
                stats.reminded += 1
        except WeComAPIError as exc:
            stats.errors += 1
            log.warning("WeCom task %s upkeep failed: %s", task.provider_task_id, exc.reason)
            await asyncio.to_thread(_update, ctx, task, last_error=exc.reason[:1000])
    return stats


def _due_count(adapter: WeComAdapter, task: ChannelTask, now: datetime) -> int:
    age = now - task.created_at
    return sum(1 for h in adapter.config.remind_after_hours if age >= timedelta(hours=h))


def _nudge_due(adapter: WeComAdapter, task: ChannelTask, now: datetime) -> bool:
    return _due_count(adapter, task, now) > task.reminders


def _cancelled(ctx: JobContext, task: ChannelTask, why: str | None, now: datetime) -> None:
    reason = (
        f"mass-send task {task.provider_task_id} recalled before staff {task.sender} "
        f"confirmed it: the customer left the SOP ({why or 'exited'})"
    )
    with session_scope(ctx.engine) as session:
        transitions.task_cancelled(
            session,
            task.provider_task_id,
            [{"b_id": i, "b_reason": reason[:500]} for i in task.delivery_ids],
            now,
        )
        _set(session, task, state=TaskState.CANCELLED, delivery_ids=[], finished_at=now)


def _update(ctx: JobContext, task: ChannelTask, **values: Any) -> None:
    with session_scope(ctx.engine) as session:
        _set(session, task, **values)
    for key, value in values.items():
        setattr(task, key, value)


def _set(session: Session, task: ChannelTask, **values: Any) -> None:
    table = ChannelTask.__table__  # type: ignore[attr-defined]
    session.execute(table.update().where(table.c.id == task.id).values(**values))


JOBS = (Job(JOB_TASK_UPKEEP, lambda s: 60.0, upkeep),)
