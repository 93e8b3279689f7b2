"""Digests: one app message per staff member per window, however many tasks.

Each check (``scheduler.staff.jobs``, every ``staff_check_seconds``) first
turns overdue tasks into ``missed``, then, outside the workspace quiet hours:

- **digest**: for every staff member with tasks not yet announced (new, handed
  over, or postponed and due again): "今天有 N 个客户 SOP 待执行" and a signed
  link to their inbox;
- **nudge**: for every staff member with open tasks whose deadline is within
  ``staff_nudge_minutes``, not nudged yet: "N 个客户 SOP 将在 M 分钟内截止".
  A staff member who gets a digest in the same check gets the nudge folded
  into it.

Exactly-once: a message is a ``staff_digests`` row with the unique key
(staff account, window start, kind), inserted insert-or-ignore in the same
transaction that marks its tasks announced; only the process whose insert
won sends it, so two workers (or two checks in one window) cannot send the
same digest twice. The send itself is at-most-once like the outbox: a crash
mid-send leaves the row ``sending`` (visible, not resent); a failed send gives
its tasks back to the next window's digest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from audiences.models import Account
from channels.base import ChannelError, OutboundMessage, ResultStatus
from channels.registry import ChannelPool
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.outbox.policies import WorkspaceDefaults
from scheduler.outbox.repository import insert_ignore
from scheduler.staff import links
from scheduler.staff import service as staff_service
from scheduler.staff.models import DigestState, StaffDigest, StaffTask
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.staff")

S = DeliveryStatus
DIGESTS = StaffDigest.__table__  # type: ignore[attr-defined]
DIGEST, NUDGE = "digest", "nudge"


@dataclass
class Planned:
    digest_id: int
    kind: str
    account_external_id: str
    channel: str
    text: str
    task_ids: list[int]
    nudged_ids: list[int]


@dataclass
class DigestStats:
    expired: int = 0
    digests: int = 0
    nudges: int = 0
    failed: int = 0
    quiet: bool = False
    errors: list[str] = field(default_factory=list)


def window_start(now: datetime, settings: Settings) -> datetime:
    """The start of the digest window ``now`` falls in (UTC-aligned)."""
    size = settings.staff_digest_minutes * 60
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, now.tzinfo)


def in_quiet_hours(now: datetime, settings: Settings) -> bool:
    quiet = WorkspaceDefaults.from_settings(settings).quiet
    if quiet is None:
        return False
    return quiet.decide(now, ZoneInfo(settings.default_timezone)).action != "send"


async def run(
    engine: Engine, clock: Clock, channels: ChannelPool, settings: Settings
) -> DigestStats:
    """One check: expire overdue tasks, then send what this window owes."""
    stats = DigestStats()
    now = clock.now()
    stats.expired = await asyncio.to_thread(_expire, engine, now)
    if in_quiet_hours(now, settings):
        stats.quiet = True  # the first window after quiet hours announces them
        return stats
    planned = await asyncio.to_thread(_plan, engine, now, settings)
    for item in planned:
        error = await _send(channels, item)
        await asyncio.to_thread(_record, engine, item, error, clock.now())
        if error is None:
            if item.kind == DIGEST:
                stats.digests += 1
            else:
                stats.nudges += 1
        else:
            stats.failed += 1
            stats.errors.append(error)
    return stats


def _expire(engine: Engine, now: datetime) -> int:
    with session_scope(engine) as session:
        return staff_service.expire_overdue(session, now)


def _open_tasks(now: datetime) -> list[object]:
    return [
        col(Delivery.status) == S.AWAITING_STAFF,
        or_(col(StaffTask.remind_at).is_(None), col(StaffTask.remind_at) <= now),
    ]


def _plan(engine: Engine, now: datetime, settings: Settings) -> list[Planned]:
    start = window_start(now, settings)
    soon = now + timedelta(minutes=settings.staff_nudge_minutes)
    nudging = settings.staff_nudge_minutes > 0
    planned: list[Planned] = []
    with session_scope(engine, immediate=True) as session:
        rows = session.execute(
            select(
                StaffTask.delivery_id,  # type: ignore[call-overload]
                StaffTask.account_id,
                StaffTask.announced_at,
                StaffTask.nudged_at,
                StaffTask.deadline_at,
                Delivery.channel,
            )
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(*_open_tasks(now))
            .order_by(col(StaffTask.delivery_id))
        ).all()
        by_account: dict[int, list[tuple[int, bool, bool, str]]] = {}
        for delivery_id, account_id, announced, nudged, deadline, channel in rows:
            new = announced is None
            due_soon = nudging and nudged is None and deadline <= soon
            by_account.setdefault(account_id, []).append((delivery_id, new, due_soon, channel))
        if not by_account:
            return []
        accounts = {
            a.id: a
            for a in session.execute(
                select(Account).where(col(Account.id).in_(sorted(by_account)))
            ).scalars()
        }
        key = links.workspace_key(session, settings, now)
        open_counts = _open_counts(session, sorted(by_account))
        for account_id, tasks in sorted(by_account.items()):
            account = accounts.get(account_id)
            new_ids = [t[0] for t in tasks if t[1]]
            soon_ids = [t[0] for t in tasks if t[2]]
            kind = DIGEST if new_ids else NUDGE if soon_ids else None
            if kind is None or account is None:
                continue
            url = links.inbox_url(settings, key, account_id, now)
            text = _text(
                kind, open_counts.get(account_id, 0), len(new_ids), len(soon_ids), settings, url
            )
            channel = min(t[3] for t in tasks)
            written = insert_ignore(
                session,
                DIGESTS,
                [
                    {
                        "account_id": account_id,
                        "kind": kind,
                        "window_start": start,
                        "channel": channel,
                        "tasks": len(new_ids) if kind == DIGEST else len(soon_ids),
                        "state": DigestState.SENDING,
                        "text": text,
                        "created_at": now,
                    }
                ],
            )
            if not written:  # this window's message went out already (or is going)
                continue
            digest_id = session.execute(
                select(StaffDigest.id).where(  # type: ignore[call-overload]
                    col(StaffDigest.account_id) == account_id,
                    col(StaffDigest.window_start) == start,
                    col(StaffDigest.kind) == kind,
                )
            ).scalar_one()
            announced = new_ids if kind == DIGEST else []
            _mark(session, announced, announced_at=now)
            _mark(session, soon_ids, nudged_at=now)
            planned.append(
                Planned(digest_id, kind, account.external_id, channel, text, announced, soon_ids)
            )
    return planned


def _open_counts(session: Session, account_ids: list[int]) -> dict[int, int]:
    return dict(
        session.execute(
            select(StaffTask.account_id, func.count())  # type: ignore[call-overload]
            .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
            .where(
                col(StaffTask.account_id).in_(account_ids),
                col(Delivery.status) == S.AWAITING_STAFF,
            )
            .group_by(StaffTask.account_id)
        ).all()
    )


def _text(kind: str, open_n: int, new_n: int, soon_n: int, settings: Settings, url: str) -> str:
    minutes = settings.staff_nudge_minutes
    if kind == DIGEST:
        text = f"【SOP 待执行】今天有 {open_n} 个客户 SOP 待执行"
        if new_n < open_n:
            text += f"（新增 {new_n} 个）"
        if soon_n:
            text += f"，其中 {soon_n} 个将在 {minutes} 分钟内截止"
        text += "。"
    else:
        text = f"【SOP 即将截止】有 {soon_n} 个客户 SOP 将在 {minutes} 分钟内截止，请尽快执行。"
    return f"{text}\n打开任务列表：{url}"


def _mark(session: Session, ids: list[int], **values: object) -> None:
    if ids:
        session.execute(
            update(StaffTask).where(col(StaffTask.delivery_id).in_(ids)).values(**values)
        )


async def _send(channels: ChannelPool, item: Planned) -> str | None:
    """Send one digest; None when the channel accepted it, else why not."""
    message = OutboundMessage(
        delivery_id=0,
        idempotency_key=f"sopbot-digest-{item.digest_id}",
        target_kind="staff",
        target_external_id=item.account_external_id,
        account_external_id=item.account_external_id,
        parts=[{"kind": "text", "text": item.text}],
        mode="remind",
        target_name=item.account_external_id,
    )
    try:
        adapter = channels.get(item.channel)
        (result,) = await adapter.send([message])
    except ChannelError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one staff member's digest fails alone
        log.exception("sending staff digest %s failed", item.digest_id)
        return f"{type(exc).__name__}: {exc}"
    if result.status != ResultStatus.SENT:
        return result.error or "the channel refused the digest"
    return None


def _record(engine: Engine, item: Planned, error: str | None, now: datetime) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(StaffDigest)
            .where(col(StaffDigest.id) == item.digest_id)
            .values(
                state=DigestState.SENT if error is None else DigestState.FAILED,
                error=None if error is None else error[:1000],
                finished_at=now,
            )
        )
        if error is not None:  # the next window's digest announces them again
            _mark(session, item.task_ids, announced_at=None)
            _mark(session, item.nudged_ids, nudged_at=None)
