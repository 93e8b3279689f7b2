"""The inbox: audience events stored before they are applied.

WeCom callbacks are verified, decrypted and stored here at once (WeCom wants a
reply within 5 s and retries); :func:`apply_pending` — the inbox job, run right
after the reply and by the scheduler for anything left over — applies them
later, oldest first. Events posted to ``POST /api/events`` are recorded here as
applied, so an idempotency id is seen only once.

Each stored event is applied in its own savepoint: one that cannot be applied,
for whatever reason (an unknown contact, a ``CreateTime`` no calendar holds, a
bug), is marked ``failed`` with the reason and never holds up the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from audiences import changes, wecom_events
from audiences import service as audiences_service
from audiences.events import InvalidEvent
from audiences.models import InboxEvent, InboxStatus
from sopbot.sql import chunked, insert_ignore

log = logging.getLogger("sopbot.inbox")

INBOX = InboxEvent.__table__  # type: ignore[attr-defined]


def seen_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these dedupe keys are already in the inbox."""
    keys = sorted(set(keys))
    out: set[str] = set()
    for chunk in chunked(keys):
        out.update(
            session.execute(
                select(INBOX.c.dedupe_key).where(INBOX.c.dedupe_key.in_(chunk))
            ).scalars()
        )
    return out


def record(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Store inbox rows (dicts of InboxEvent columns); a known dedupe key is skipped.
    Returns how many were new."""
    return insert_ignore(session, INBOX, rows)


def enqueue(
    session: Session,
    *,
    dedupe_key: str,
    source: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Store one event to apply later; False if its key was seen before (a retry)."""
    return (
        record(
            session,
            [
                {
                    "dedupe_key": dedupe_key,
                    "source": source,
                    "kind": kind,
                    "payload": payload,
                    "received_at": now,
                    "status": InboxStatus.PENDING,
                }
            ],
        )
        == 1
    )


def claim_pending(session: Session, limit: int = 200) -> list[InboxEvent]:
    """The oldest pending inbox rows, locked for this transaction (SKIP LOCKED on
    PostgreSQL; SQLite's transactions already hold the write lock)."""
    stmt = (
        select(InboxEvent)
        .where(col(InboxEvent.status) == InboxStatus.PENDING)
        .order_by(col(InboxEvent.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.execute(stmt).scalars().all())


def mark(
    session: Session, row_id: int, status: str, now: datetime, error: str | None = None
) -> None:
    session.execute(
        update(INBOX)
        .where(INBOX.c.id == row_id)
        .values(status=status, applied_at=now, error=error[:2000] if error else None)
    )


@dataclass
class InboxResult:
    applied: int = 0
    failed: int = 0
    ignored: int = 0
    reaction: changes.Reaction = field(default_factory=changes.Reaction)


def apply_pending(
    session: Session, now: datetime, *, react: changes.Reactor, limit: int = 500
) -> InboxResult:
    """Apply stored events not yet applied (WeCom callbacks), oldest first, each
    in its own savepoint: a bad one is marked failed with the reason and changes
    nothing, the others go ahead."""
    result = InboxResult()
    for row in claim_pending(session, limit):
        row_id: int = row.id  # type: ignore[assignment]
        try:
            with session.begin_nested():
                outcome = _apply_one(session, row, now, react)
        except (InvalidEvent, changes.EventsRejected) as exc:
            detail = exc.detail() if isinstance(exc, changes.EventsRejected) else str(exc)
            log.warning("inbox event %s (%s) failed: %s", row_id, row.kind, detail)
            mark(session, row_id, InboxStatus.FAILED, now, detail)
            result.failed += 1
            continue
        except Exception as exc:  # poison: whatever it is, it fails alone
            log.exception("inbox event %s (%s) could not be applied", row_id, row.kind)
            mark(session, row_id, InboxStatus.FAILED, now, f"{type(exc).__name__}: {exc}")
            result.failed += 1
            continue
        if isinstance(outcome, str):
            mark(session, row_id, InboxStatus.IGNORED, now, outcome)
            result.ignored += 1
            continue
        result.reaction.add(outcome)
        failures = "; ".join(f"{f['template']}: {f['error']}" for f in outcome.failures)
        mark(session, row_id, InboxStatus.APPLIED, now, failures or None)
        result.applied += 1
    return result


def _apply_one(
    session: Session, row: InboxEvent, now: datetime, react: changes.Reactor
) -> changes.Reaction | str:
    """Apply one stored event; a string says why it was ignored."""
    if row.source == wecom_events.SOURCE:
        items, ignored = wecom_events.to_events(row.payload.get("fields", {}))
        if ignored:
            return ignored
        for account in wecom_events.accounts_of(items):
            audiences_service.ensure_account(session, account)
    else:
        items = [row.payload]
    return changes.apply(session, items, now, react=react).reaction
