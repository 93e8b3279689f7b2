"""Transitions of rows nobody holds any more: overdue rows missed, expired
leases reaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, select, update
from sqlmodel import Session, col

from scheduler.outbox.models import (
    REASON_LENGTH,
    Delivery,
)
from scheduler.outbox.transitions.machine import (
    S,
    _fence,
    check,
)
from sopbot.db import rowcount

# -- rows nobody holds any more ------------------------------------------------


def miss_overdue(session: Session, *, now: datetime, held_templates: Sequence[int] = ()) -> int:
    """miss: due rows past their grace period become missed (never tried) or
    failed (retried until the deadline) instead of going out late."""
    conditions = [
        col(Delivery.status) == S.SCHEDULED,
        col(Delivery.run_at) <= now,
        col(Delivery.expires_at) < now,
    ]
    if held_templates:
        conditions.append(col(Delivery.template_id).not_in(list(held_templates)))
    stmt = (
        update(Delivery)
        .where(*conditions)
        .values(
            status=case((col(Delivery.attempts) > 0, S.FAILED), else_=S.MISSED),
            reason=case(
                (
                    col(Delivery.attempts) > 0,
                    func.substr(
                        "gave up: retries ran past the grace period (last error: "
                        + col(Delivery.reason)
                        + ")",
                        1,
                        REASON_LENGTH,
                    ),
                ),
                else_="not sent within its grace period (scheduler down or backlog)",
            ),
            finished_at=now,
            lease_owner=None,
        )
    )
    return rowcount(session.execute(stmt))


REAPED_UNKNOWN = "worker stopped while sending (lease expired); outcome unknown, not resent"
REAPED_RESEND = "worker stopped mid-send; channel deduplicates, so sending again"


def reap(session: Session, *, now: datetime, deduplicating: Iterable[str] = ()) -> dict[str, int]:
    """reap_claimed, reap_resend, reap_sending: leases nobody renewed.

    A live worker renews what it holds, so an expired lease means its worker
    stopped: claimed rows go back to scheduled (nothing was sent); sending rows
    become unknown, or scheduled again on a channel in ``deduplicating``."""
    released = reap_claimed(session, now=now)
    resent = reap_resend(session, now=now, channels=list(deduplicating))
    unknown = reap_sending(session, now=now)
    return {"released": released, "resent": resent, "unknown": unknown}


def _expired(now: datetime) -> ColumnElement[bool]:
    return col(Delivery.lease_expires_at) < now


def reap_claimed(session: Session, *, now: datetime) -> int:
    """reap_claimed: claimed, lease expired → scheduled (nothing was sent)."""
    check("reap_claimed", S.SCHEDULED)
    stmt = (
        update(Delivery)
        .where(*_fence("reap_claimed", None), _expired(now))
        .values(status=S.SCHEDULED, lease_owner=None, lease_expires_at=None)
    )
    return rowcount(session.execute(stmt))


def reap_resend(session: Session, *, now: datetime, channels: Sequence[str]) -> int:
    """reap_resend: sending, lease expired, on a channel that deduplicates on
    the delivery key → scheduled (sent again; the receiver drops a copy)."""
    check("reap_resend", S.SCHEDULED)
    if not channels:
        return 0
    stmt = (
        update(Delivery)
        .where(
            *_fence("reap_resend", None), _expired(now), col(Delivery.channel).in_(list(channels))
        )
        .values(status=S.SCHEDULED, lease_owner=None, lease_expires_at=None, reason=REAPED_RESEND)
    )
    return rowcount(session.execute(stmt))


def reap_sending(session: Session, *, now: datetime) -> int:
    """reap_sending: sending, lease expired → unknown (not resent). The owner
    stays on the row: its late outcome may still resolve it."""
    check("reap_sending", S.UNKNOWN)
    stmt = (
        update(Delivery)
        .where(*_fence("reap_sending", None), _expired(now))
        .values(status=S.UNKNOWN, reason=REAPED_UNKNOWN, finished_at=now)
    )
    return rowcount(session.execute(stmt))


def expired_sending_channels(session: Session, now: datetime) -> set[str]:
    """Channels with sending rows whose lease expired (candidates for reap_resend)."""
    return set(
        session.execute(
            select(Delivery.channel)  # type: ignore[call-overload]
            .where(col(Delivery.status) == S.SENDING, col(Delivery.lease_expires_at) < now)
            .distinct()
        ).scalars()
    )
