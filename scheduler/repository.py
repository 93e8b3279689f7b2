"""Set-based SQL for the outbox: bulk inserts that ignore duplicates, and the
claim, which is the one place the two databases differ."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.models import Delivery, DeliveryStatus, Enrollment

DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS: Table = Enrollment.__table__  # type: ignore[attr-defined]

CHUNK = 5000


def insert_ignore(
    session: Session | Connection, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` in chunks (executemany)."""
    if not rows:
        return
    dialect = (
        session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name
    )
    stmt = (
        postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    ).on_conflict_do_nothing()
    for start in range(0, len(rows), CHUNK):
        session.execute(stmt, list(rows[start : start + CHUNK]))


def chunked(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    stmt = text(
        f"""
        UPDATE deliveries SET status = :claimed, lease_owner = :owner,
               lease_expires_at = :lease_until
        WHERE id IN (
            SELECT id FROM deliveries
            WHERE status = :scheduled AND run_at <= :now {held}
            ORDER BY run_at
            LIMIT :limit {lock}
        ) AND status = :scheduled
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
