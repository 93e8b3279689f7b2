"""Task mode: a platform creates a mass-send task that a staff member confirms
(WeCom ``add_msg_template``); sopbot polls for the result.

How an awaiting task shows in the delivery log: the delivery becomes ``sent`` as
soon as the platform accepted the task — sopbot's part is done, it must never
create the task twice, and the customer's frequency cap counts it — with
``provider_message_id`` = the task id and the reason
``mass-send task <id> created for staff <account>; awaiting staff confirmation``.
The poll (this module, an APScheduler job) then rewrites the reason to
``confirmed by staff ...`` (``sent_at`` = when the staff member sent it), moves the
delivery to ``failed`` with the platform's reason (not a friend any more, the
customer already received a mass message), or — when nobody confirmed within
``task_confirm_hours`` — to ``unknown``.

Which tasks are still open lives in ``channel_tasks`` (one row per task and
sender, with the deliveries still awaiting), not in an extra column of the hot
``deliveries`` table: the claim index stays as it is, and the poll reads a few
task rows instead of scanning deliveries.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from audiences.models import Contact, GroupChat
from channels.base import ChannelError, task_poller
from channels.models import ChannelTask, TaskState
from channels.registry import ChannelPool
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, DeliveryStatus, clip_reason
from scheduler.outbox.repository import chunked, insert_ignore
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.tasks")

TASKS = ChannelTask.__table__  # type: ignore[attr-defined]
S = DeliveryStatus

MAX_POLL_INTERVAL = timedelta(hours=1)


def awaiting_reason(task_id: str, sender: str) -> str:
    return f"mass-send task {task_id} created for staff {sender}; awaiting staff confirmation"


def _poll_interval(settings: Settings, polls: int) -> timedelta:
    return min(
        MAX_POLL_INTERVAL, timedelta(seconds=settings.task_poll_seconds * 2 ** min(polls, 12))
    )


def record_created(
    session: Session,
    created: dict[tuple[str, str, str], list[int]],
    now: datetime,
    settings: Settings,
) -> None:
    """Remember tasks the dispatcher just created: (channel, task id, sender) → deliveries."""
    rows = [
        {
            "channel": channel,
            "provider_task_id": task_id,
            "sender": sender,
            "delivery_ids": sorted(ids),
            "state": TaskState.AWAITING,
            "created_at": now,
            "next_poll_at": now + _poll_interval(settings, 0),
            "polls": 0,
            "confirmed": 0,
            "failed": 0,
        }
        for (channel, task_id, sender), ids in created.items()
    ]
    insert_ignore(session, TASKS, rows)


@dataclass
class PollStats:
    polled: int = 0
    confirmed: int = 0
    failed: int = 0
    unknown: int = 0
    errors: int = 0


async def poll_tasks(
    engine: Engine,
    clock: Clock,
    channels: ChannelPool,
    settings: Settings,
    *,
    limit: int = 20,
) -> PollStats:
    """Ask the platform about every task whose poll is due (at most ``limit``)."""
    stats = PollStats()
    due = await asyncio.to_thread(_take_due, engine, clock.now(), limit, settings)
    for task in due:
        stats.polled += 1
        try:
            poller = task_poller(channels.get(task["channel"]))
            if poller is None:
                raise ChannelError(f"channel {task['channel']!r} cannot poll task outcomes")
        except ChannelError as exc:
            stats.errors += 1
            await asyncio.to_thread(_note_error, engine, task, str(exc))
            continue
        try:
            outcomes = await poller.poll_task_outcomes(task["provider_task_id"], task["sender"])
        except Exception as exc:  # noqa: BLE001 - keep polling the others
            stats.errors += 1
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            log.warning("polling task %s failed: %s", task["provider_task_id"], reason)
            await asyncio.to_thread(_note_error, engine, task, str(reason))
            continue
        applied = await asyncio.to_thread(_apply, engine, task, outcomes, clock.now(), settings)
        stats.confirmed += applied.confirmed
        stats.failed += applied.failed
        stats.unknown += applied.unknown
    return stats


def _take_due(
    engine: Engine, now: datetime, limit: int, settings: Settings
) -> list[dict[str, Any]]:
    """Claim due polls: pushing ``next_poll_at`` forward is the lease, so another
    worker does not poll the same task meanwhile."""
    lease = now + timedelta(seconds=max(60.0, settings.task_poll_seconds))
    with session_scope(engine, immediate=True) as session:
        rows = session.execute(
            select(TASKS)
            .where(TASKS.c.state == TaskState.AWAITING, TASKS.c.next_poll_at <= now)
            .order_by(TASKS.c.next_poll_at)
            .limit(limit)
        ).all()
        taken = []
        for row in rows:
            moved = session.execute(
                TASKS.update()
                .where(TASKS.c.id == row.id, TASKS.c.next_poll_at == row.next_poll_at)
                .values(next_poll_at=lease)
            ).rowcount  # type: ignore[attr-defined]
            if moved:
                taken.append(dict(row._mapping))
        return taken


def _note_error(engine: Engine, task: dict[str, Any], error: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            TASKS.update().where(TASKS.c.id == task["id"]).values(last_error=error[:1000])
        )


def _external_ids(session: Session, delivery_ids: list[int]) -> dict[int, str]:
    """Delivery id → the target's external id (what the platform reports on)."""
    out: dict[int, str] = {}
    for chunk in chunked(delivery_ids, 900):
        for model, kind in ((Contact, "contact"), (GroupChat, "group")):
            rows = session.execute(
                select(Delivery.id, model.external_id)  # type: ignore[call-overload]
                .join(model, col(model.id) == col(Delivery.target_id))
                .where(col(Delivery.id).in_(list(chunk)), col(Delivery.target_kind) == kind)
            ).all()
            out.update({delivery_id: external for delivery_id, external in rows})
    return out


@dataclass
class _Applied:
    confirmed: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0


def _apply(
    engine: Engine,
    task: dict[str, Any],
    outcomes: dict[str, Any],
    now: datetime,
    settings: Settings,
) -> _Applied:
    applied = _Applied()
    task_id = task["provider_task_id"]
    with session_scope(engine) as session:
        externals = _external_ids(session, task["delivery_ids"])
        confirmed: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        waiting: list[int] = []
        for delivery_id in task["delivery_ids"]:
            # "*": one outcome for every target of the sender (a moment's publishing)
            outcome = outcomes.get(externals.get(delivery_id, ""), outcomes.get("*"))
            if outcome is None or outcome.status == "pending":
                waiting.append(delivery_id)
            elif outcome.status == "sent":
                sent_at = (
                    datetime.fromtimestamp(outcome.send_time, now.tzinfo)
                    if outcome.send_time
                    else now
                )
                confirmed.append(
                    {
                        "b_id": delivery_id,
                        "b_sent_at": sent_at,
                        "b_reason": f"confirmed by staff {task['sender']}: "
                        + (outcome.reason or f"mass-send task {task_id} delivered"),
                    }
                )
            else:
                # skipped: the platform declined by its own rule (the customer's quota)
                (skipped if outcome.status == "skipped" else failed).append(
                    {
                        "b_id": delivery_id,
                        "b_reason": clip_reason(
                            f"mass-send task {task_id}: {outcome.reason or outcome.status}"
                        ),
                    }
                )
        deadline = task["created_at"] + timedelta(hours=settings.task_confirm_hours)
        expired = bool(waiting) and now >= deadline
        transitions.confirm_task(session, task_id, confirmed)
        transitions.task_failed(session, task_id, failed, now)
        transitions.task_skipped(session, task_id, skipped, now)
        if expired:
            reason = (
                f"mass-send task {task_id}: staff {task['sender']} did not confirm within "
                f"{settings.task_confirm_hours:g} h; outcome unknown"
            )
            transitions.task_expired(session, task_id, waiting, reason, now)
        applied = _Applied(
            len(confirmed), len(failed), len(waiting) if expired else 0, len(skipped)
        )
        polls = task["polls"] + 1
        state = (
            TaskState.DONE if not waiting else TaskState.EXPIRED if expired else TaskState.AWAITING
        )
        session.execute(
            TASKS.update()
            .where(TASKS.c.id == task["id"])
            .values(
                delivery_ids=[] if expired else waiting,
                confirmed=task["confirmed"] + applied.confirmed,
                failed=task["failed"] + applied.failed + applied.skipped,
                polls=polls,
                state=state,
                next_poll_at=min(now + _poll_interval(settings, polls), max(deadline, now)),
                last_error=None,
                finished_at=now if state != TaskState.AWAITING else None,
            )
        )
    return applied


def open_tasks(session: Session, channel: str | None = None, limit: int = 100) -> list[ChannelTask]:
    """Tasks still awaiting staff confirmation, oldest first (for the API/UI)."""
    stmt = select(ChannelTask).where(col(ChannelTask.state) == TaskState.AWAITING)
    if channel is not None:
        stmt = stmt.where(col(ChannelTask.channel) == channel)
    return list(session.execute(stmt.order_by(col(ChannelTask.created_at)).limit(limit)).scalars())
