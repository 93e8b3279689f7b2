"""Worker heartbeats and the operational summary built on them.

Every scheduler process (``sopbot worker``, or ``sopbot serve`` with its
scheduler) upserts one ``workers`` row on start, every
``SOPBOT_HEARTBEAT_SECONDS`` and on a graceful stop. A process whose row was seen
within ``SOPBOT_WORKER_STALE_SECONDS`` and that has not said it stopped is
*live*. ``/healthz``, ``/api/workers``, ``/metrics`` and the dashboard read the
same summary: live workers, the backlog (due, not yet claimed) and the oldest
overdue delivery.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.operations.models import Worker
from scheduler.outbox.dispatch import DispatchStats
from scheduler.outbox.models import Delivery, DeliveryStatus
from sopbot import __version__
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.sql import insert_of

log = logging.getLogger("sopbot.heartbeat")

WORKERS = Worker.__table__  # type: ignore[attr-defined]
# Rows of processes gone this long are deleted (host:pid ids never come back).
FORGET_AFTER = timedelta(days=7)


class Heartbeat:
    """This process's ``workers`` row and the counters it reports."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        worker_id: str,
        *,
        role: str = "worker",
        version: str = __version__,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.worker_id = worker_id
        self.role = role
        self.version = version
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at: datetime | None = None  # the first beat's time
        self.claimed_total = 0
        self.sent_total = 0
        self.failed_total = 0
        # Beats run in worker threads (the interval job, and the last one from
        # shutdown): one at a time, and none after the stop was recorded, so a
        # late interval beat cannot bring back a stopped worker or old counts.
        self._lock = threading.Lock()
        self._stopped = False

    def record(self, stats: DispatchStats) -> None:
        """Count what a dispatch tick did (written at the next beat)."""
        self.claimed_total += stats.claimed
        self.sent_total += stats.outcomes[DeliveryStatus.SENT]
        self.failed_total += (
            stats.outcomes[DeliveryStatus.FAILED] + stats.outcomes[DeliveryStatus.UNKNOWN]
        )

    def beat(self, *, stopped: bool = False) -> None:
        """Upsert this process's row (``stopped``: it is shutting down gracefully)."""
        with self._lock:
            if self._stopped:
                return
            self._beat(stopped)
            self._stopped = stopped

    def _beat(self, stopped: bool) -> None:
        now = self.clock.now()
        if self.started_at is None:
            self.started_at = now
        values: dict[str, Any] = {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "version": self.version,
            "started_at": self.started_at,
            "last_seen_at": now,
            "stopped_at": now if stopped else None,
            "claimed_total": self.claimed_total,
            "sent_total": self.sent_total,
            "failed_total": self.failed_total,
        }
        with session_scope(self.engine) as session:
            stmt = insert_of(session, WORKERS).values(**values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[WORKERS.c.id],
                set_={k: stmt.excluded[k] for k in values if k != "id"},
            )
            session.execute(stmt)
            session.execute(delete(WORKERS).where(WORKERS.c.last_seen_at < now - FORGET_AFTER))


# -- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    pid: int
    role: str
    version: str
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    claimed_total: int
    sent_total: int
    failed_total: int
    live: bool
    seen_seconds_ago: float


@dataclass(frozen=True)
class OverdueDelivery:
    """The scheduled delivery that has waited longest since it became due."""

    id: int
    template_id: int
    channel: str
    due_at: datetime
    run_at: datetime
    overdue_seconds: float


@dataclass(frozen=True)
class OpsSummary:
    now: datetime
    live_workers: int
    workers: list[WorkerView]
    backlog: int
    oldest_overdue: OverdueDelivery | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_live(worker: Worker | Any, now: datetime, stale: timedelta) -> bool:
    return worker.stopped_at is None and worker.last_seen_at >= now - stale


def list_workers(
    session: Session, now: datetime, stale: timedelta, *, include_gone: bool = False
) -> list[WorkerView]:
    """Workers, live ones first. ``include_gone`` adds stopped and silent ones
    seen in the last day (a crashed worker shows as not live, then ages out)."""
    stmt = select(WORKERS).order_by(WORKERS.c.last_seen_at.desc(), WORKERS.c.id)
    if include_gone:
        stmt = stmt.where(WORKERS.c.last_seen_at >= now - timedelta(days=1))
    else:
        stmt = stmt.where(WORKERS.c.last_seen_at >= now - stale, WORKERS.c.stopped_at.is_(None))
    views = [
        WorkerView(
            id=row.id,
            host=row.host,
            pid=row.pid,
            role=row.role,
            version=row.version,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
            stopped_at=row.stopped_at,
            claimed_total=row.claimed_total,
            sent_total=row.sent_total,
            failed_total=row.failed_total,
            live=is_live(row, now, stale),
            seen_seconds_ago=round(max(0.0, (now - row.last_seen_at).total_seconds()), 3),
        )
        for row in session.execute(stmt).all()
    ]
    return sorted(views, key=lambda w: not w.live)


def count_live_workers(session: Session, now: datetime, stale: timedelta) -> int:
    return int(
        session.execute(
            select(func.count()).where(
                WORKERS.c.last_seen_at >= now - stale, WORKERS.c.stopped_at.is_(None)
            )
        ).scalar_one()
    )


def backlog(
    session: Session, now: datetime, *, up_to: int | None = None
) -> tuple[int, OverdueDelivery | None]:
    """Deliveries due and still waiting to be claimed, and the oldest of them.

    Both read the ``(status, run_at)`` index: a range count and one row. With
    ``up_to``, counting stops there (a burst of 100,000 due rows costs a health
    probe a scan of all of them otherwise): the count is then ``up_to + 1``,
    meaning "more than ``up_to``"."""
    due = (col(Delivery.status) == DeliveryStatus.SCHEDULED, col(Delivery.run_at) <= now)
    if up_to is None:
        count = int(session.execute(select(func.count()).where(*due)).scalar_one())
    else:
        capped = select(col(Delivery.id)).where(*due).limit(up_to + 1).subquery()
        count = int(session.execute(select(func.count()).select_from(capped)).scalar_one())
    if not count:
        return 0, None
    row = session.execute(
        select(  # type: ignore[call-overload]
            Delivery.id, Delivery.template_id, Delivery.channel, Delivery.due_at, Delivery.run_at
        )
        .where(*due)
        .order_by(col(Delivery.run_at))
        .limit(1)
    ).first()
    if row is None:  # claimed in between
        return count, None
    return count, OverdueDelivery(
        id=row.id,
        template_id=row.template_id,
        channel=row.channel,
        due_at=row.due_at,
        run_at=row.run_at,
        overdue_seconds=round((now - row.run_at).total_seconds(), 3),
    )


def ops_summary(
    session: Session,
    now: datetime,
    stale: timedelta,
    *,
    include_gone: bool = False,
    backlog_up_to: int | None = None,
) -> OpsSummary:
    """What ``/healthz`` and ``/api/workers`` report."""
    workers = list_workers(session, now, stale, include_gone=include_gone)
    count, oldest = backlog(session, now, up_to=backlog_up_to)
    return OpsSummary(
        now=now,
        live_workers=sum(1 for w in workers if w.live),
        workers=workers,
        backlog=count,
        oldest_overdue=oldest,
    )
