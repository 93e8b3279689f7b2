"""The audit log: who changed what, when.

Routes that change something record a specific entry (``template.publish`` with
the version, ``user.create`` with the roles...). Any other successful change
made through the API (another package's router) is recorded generically by the
app's audit middleware as ``api.<method>`` with the path, so nothing that
changes state goes unrecorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from api.users.models import AuditEntry


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    username: str


def record(
    session: Session,
    actor: Actor | None,
    action: str,
    now: datetime,
    *,
    object_kind: str = "",
    object_id: int | str | None = None,
    summary: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=now,
        user_id=actor.user_id if actor else None,
        username=actor.username if actor else "system",
        action=action,
        object_kind=object_kind,
        object_id=None if object_id is None else str(object_id),
        summary=summary[:1000],
        detail=detail or {},
    )
    session.add(entry)
    session.flush()
    return entry


def entries(
    session: Session,
    *,
    object_kind: str | None = None,
    object_id: int | str | None = None,
    user_id: int | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first; ``before_id`` pages back."""
    stmt = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(limit)
    if object_kind:
        stmt = stmt.where(AuditEntry.object_kind == object_kind)
    if object_id is not None:
        stmt = stmt.where(AuditEntry.object_id == str(object_id))
    if user_id is not None:
        stmt = stmt.where(AuditEntry.user_id == user_id)
    if before_id is not None:
        stmt = stmt.where(col(AuditEntry.id) < before_id)
    return list(session.exec(stmt).all())
