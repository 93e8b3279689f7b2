"""The one table of allowed delivery moves, and what every transition
shares: the check against it, the outcome a transition writes, the fence.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlmodel import Session, col

from scheduler.outbox.models import (
    Delivery,
    DeliveryStatus,
)
from sopbot.db import is_sqlite
from sopbot.sql import unindexed

S = DeliveryStatus


class TransitionRefused(ValueError):
    """A status change the state machine does not allow."""


def _moves(*pairs: tuple[str, Collection[str]]) -> dict[str, frozenset[str]]:
    return {start: frozenset(targets) for start, targets in pairs}


# transition name → {from status: allowed to statuses}. The one table.
TABLE: dict[str, dict[str, frozenset[str]]] = {
    "claim": _moves((S.SCHEDULED, {S.CLAIMED})),
    "renew": _moves((S.CLAIMED, {S.CLAIMED}), (S.SENDING, {S.SENDING})),  # the lease only
    "mark_sending": _moves((S.CLAIMED, {S.SENDING})),
    # decided before the send (render error, inactive target, policy, admission)
    "skip": _moves((S.CLAIMED, {S.SKIPPED})),
    "fail": _moves((S.CLAIMED, {S.FAILED})),
    # overdue: missed (never tried) or failed (retried until the deadline)
    "miss": _moves((S.SCHEDULED, {S.MISSED, S.FAILED}), (S.CLAIMED, {S.MISSED})),
    "defer": _moves((S.CLAIMED, {S.SCHEDULED})),
    "record_outcome": _moves((S.SENDING, {S.SENT, S.FAILED, S.SCHEDULED, S.UNKNOWN, S.SKIPPED})),
    "resolve_unknown": _moves((S.UNKNOWN, {S.SENT, S.FAILED, S.SCHEDULED, S.SKIPPED})),
    "release": _moves((S.CLAIMED, {S.SCHEDULED})),
    # marked sending as next in line, then a stop came before the call started
    "unmark": _moves((S.SENDING, {S.SCHEDULED})),
    "reap_claimed": _moves((S.CLAIMED, {S.SCHEDULED})),
    "reap_resend": _moves((S.SENDING, {S.SCHEDULED})),
    "reap_sending": _moves((S.SENDING, {S.UNKNOWN})),
    "cancel": _moves(
        (S.SCHEDULED, {S.CANCELLED}), (S.CLAIMED, {S.CANCELLED}), (S.AWAITING_STAFF, {S.CANCELLED})
    ),
    "repoint": _moves((S.SCHEDULED, {S.SCHEDULED, S.SKIPPED})),
    "task_failed": _moves((S.SENT, {S.FAILED})),
    "task_expired": _moves((S.SENT, {S.UNKNOWN})),
    # the platform declined by its own rule (WeCom: customer's mass-send quota used)
    "task_skipped": _moves((S.SENT, {S.SKIPPED})),
    # the task was recalled before the staff member confirmed it
    "task_cancelled": _moves((S.SENT, {S.CANCELLED})),
    # remind mode: the task waits in the staff member's inbox until they act or
    # its deadline passes (scheduler.staff)
    "assign_staff": _moves((S.CLAIMED, {S.AWAITING_STAFF})),
    "staff_done": _moves((S.AWAITING_STAFF, {S.DONE})),
    "staff_skip": _moves((S.AWAITING_STAFF, {S.SKIPPED_BY_STAFF})),
    "staff_miss": _moves((S.AWAITING_STAFF, {S.MISSED})),
}

# Before sending, a claimed row's outcome picks its transition by status.
_SETTLE = {
    S.SKIPPED: "skip",
    S.FAILED: "fail",
    S.MISSED: "miss",
    S.SCHEDULED: "defer",
    S.AWAITING_STAFF: "assign_staff",
}


def allowed(name: str, start: str, to: str) -> bool:
    """Whether transition ``name`` may move a row from ``start`` to ``to``."""
    return to in TABLE.get(name, {}).get(start, frozenset())


def starts(name: str) -> list[str]:
    """The statuses transition ``name`` moves rows from (its fence)."""
    return sorted(TABLE[name])


def check(name: str, *targets: str) -> None:
    """Refuse ``name`` writing any of ``targets`` (not in the table)."""
    if name not in TABLE:
        raise TransitionRefused(f"no delivery transition named {name!r}")
    reachable = set().union(*TABLE[name].values())
    for to in targets:
        if to not in reachable:
            raise TransitionRefused(
                f"delivery transition {name!r} cannot move a row to {to!r} "
                f"(from {', '.join(starts(name))} it reaches {', '.join(sorted(reachable))})"
            )


@dataclass
class Outcome:
    """What happened to one delivery, to be written by a transition."""

    status: str
    reason: str | None = None
    provider_message_id: str | None = None
    run_at: datetime | None = None
    rendered: list[dict[str, Any]] | None = None
    sent: bool = False
    retry_after: float | None = None
    expires_at: datetime | None = None  # a policy deferral moves the deadline too


def _fence(
    name: str, owner: str | None, *, by_id: Session | None = None
) -> list[ColumnElement[bool]]:
    """The rows ``name`` may move: in one of its start statuses (and held by
    ``owner``). ``by_id``: the session of a statement that names its rows (by
    id, enrollment...); on SQLite their status is then checked row by row, not
    looked up through the status index. SQLite has no statistics to tell the
    two apart and took the index: every such write (a claim's batch, a wave,
    the exit of several contacts at once) read every row still in that status,
    a 1,000,000-row backlog for each claim."""
    status = unindexed(col(Delivery.status), by_id is not None and is_sqlite(by_id.get_bind()))
    conditions: list[ColumnElement[bool]] = [status.in_(starts(name))]
    if owner is not None:
        conditions.append(col(Delivery.lease_owner) == owner)
    return conditions
