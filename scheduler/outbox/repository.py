"""Set-based SQL for the outbox: the deliveries and enrollments tables, and the
claim, which is the one place the two databases differ. The bulk helpers
(``insert_ignore``, ``chunked``, ``among``, ...) are ``sopbot.sql``'s, importable
from here too."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, text
from sqlmodel import Session

from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment
from sopbot.sql import CHUNK as CHUNK
from sopbot.sql import among as among
from sopbot.sql import chunked as chunked
from sopbot.sql import execute_many as execute_many
from sopbot.sql import insert_ignore as insert_ignore
from sopbot.sql import insert_rows as insert_rows
from sopbot.sql import instant_param as instant_param
from sopbot.sql import memoized as memoized
from sopbot.sql import sqlite_instant as sqlite_instant

DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS: Table = Enrollment.__table__  # type: ignore[attr-defined]

CLAIM_COLUMNS = (
    "id, enrollment_id, touchpoint_id, occurrence, template_id, version_id, target_kind, "
    "target_id, channel, mode, due_at, run_at, expires_at, attempts"
)


def claim_due(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    limit: int,
    held_templates: Sequence[int] = (),
) -> list[Any]:
    """Atomically move up to ``limit`` due rows from scheduled to claimed.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets many workers claim disjoint
    batches at once. SQLite: the caller's transaction began with ``BEGIN
    IMMEDIATE`` (SQLAlchemy silently drops ``skip_locked`` there), so the whole
    statement runs under the write lock.
    """
    dialect = session.get_bind().dialect.name
    held = ""
    params: dict[str, Any] = {
        "now": now,
        "owner": owner,
        "lease_until": lease_until,
        "limit": limit,
        "scheduled": DeliveryStatus.SCHEDULED,
        "claimed": DeliveryStatus.CLAIMED,
    }
    if held_templates:
        held = "AND template_id NOT IN :held"
        params["held"] = list(held_templates)
    lock = "FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    due = f"""
            SELECT id FROM deliveries
            WHERE status = :scheduled AND run_at <= :now {held}
            ORDER BY run_at
            LIMIT :limit {lock}
    """
    # PostgreSQL may plan ``id IN (... LIMIT n FOR UPDATE SKIP LOCKED)`` as a nested-loop
    # semi join that rescans the subquery per row and claims far more than ``limit``
    # rows; a MATERIALIZED CTE runs it exactly once.
    prefix, source = "", due
    if dialect == "postgresql":
        prefix, source = f"WITH due AS MATERIALIZED ({due})", "SELECT id FROM due"
    stmt = text(
        f"""
        {prefix}
        UPDATE deliveries SET status = :claimed, lease_owner = :owner,
               lease_expires_at = :lease_until
        WHERE id IN ({source}) AND status = :scheduled
        RETURNING {CLAIM_COLUMNS}
        """
    )
    stmt = stmt.bindparams(
        bindparam("now", type_=DELIVERIES.c.run_at.type),
        bindparam("lease_until", type_=DELIVERIES.c.run_at.type),
    )
    if held_templates:
        stmt = stmt.bindparams(bindparam("held", expanding=True))
    dt = DELIVERIES.c.due_at.type
    typed = stmt.columns(
        DELIVERIES.c.id,
        DELIVERIES.c.enrollment_id,
        DELIVERIES.c.touchpoint_id,
        DELIVERIES.c.occurrence,
        DELIVERIES.c.template_id,
        DELIVERIES.c.version_id,
        DELIVERIES.c.target_kind,
        DELIVERIES.c.target_id,
        DELIVERIES.c.channel,
        DELIVERIES.c.mode,
        due_at=dt,
        run_at=dt,
        expires_at=dt,
        attempts=DELIVERIES.c.attempts.type,
    )
    rows = session.execute(typed, params).all()
    return sorted(rows, key=lambda r: (r.run_at, r.id))
