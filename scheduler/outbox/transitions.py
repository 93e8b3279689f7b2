"""The delivery state machine: every way ``deliveries.status`` changes.

Each transition is one named, set-based statement fenced by the status it
starts from (and by the lease owner where a worker holds the row). ``TABLE`` is
the one list of allowed moves; every function here checks the statuses it
writes against it, so a move that is not in the table raises
:class:`TransitionRefused` before any SQL runs, and a row that is not in the
transition's start status (or not held by the caller) is simply not touched.

::

    scheduled ─claim─► claimed ─mark_sending─► sending ─record_outcome─► sent / failed / unknown
      ▲  ▲  │              │  │                   │  │                    │
      │  │  │ miss         │  │ skip/fail/miss    │  │ record_outcome     │ (late outcome of
      │  │  ▼              │  ▼ (before sending)  │  │ (retry)            │  the lease owner)
      │  │ missed/failed   │ skipped/failed/missed│  │                    ▼
      │  └── release, reap_claimed, defer ────────┘  │            resolve_unknown ─► sent/failed/scheduled
      └──────────── record_outcome (retry), reap_resend (deduplicating channel) ──┘
                                          reap_sending: sending ─► unknown
    claim takes due welcomes first (URGENT_MODE); claim_siblings: scheduled ─► claimed for
      the due task/moment rows of a touchpoint occurrence already in the batch
    unmark: sending ─► scheduled (marked as next in line, a stop came before the call)
    cancel: scheduled/claimed ─► cancelled      repoint: scheduled ─► scheduled/skipped
    task_failed / task_expired: sent ─► failed / unknown (mass-send task polls)
    task_skipped / task_cancelled: sent ─► skipped / cancelled (quota used; task recalled)
    record_outcome may also end sending ─► skipped (the channel applied the touchpoint's rule)
    remind mode (scheduler.staff): claimed ─assign_staff─► awaiting_staff ─staff_done─► done
      awaiting_staff ─staff_skip─► skipped_by_staff, ─staff_miss─► missed (deadline passed),
      ─cancel─► cancelled
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, bindparam, case, func, or_, select, text, update
from sqlmodel import Session, col

from scheduler.outbox import repository
from scheduler.outbox.models import (
    GATHER_WHERE,
    REASON_LENGTH,
    URGENT_WHERE,
    Delivery,
    DeliveryStatus,
    clip_reason,
)
from sopbot.db import rowcount

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


def _fence(name: str, owner: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [col(Delivery.status).in_(starts(name))]
    if owner is not None:
        conditions.append(col(Delivery.lease_owner) == owner)
    return conditions


# -- a worker's own rows -------------------------------------------------------


class Claimed(NamedTuple):
    """A claimed row as dispatch reads it. A plain tuple: its fields are read
    dozens of times per delivery, and a SQLAlchemy ``Row`` answers each
    attribute only after a failed ordinary lookup (an ``AttributeError`` built
    and thrown away), a tenth of the worker's CPU on the dispatch path."""

    id: int
    enrollment_id: int
    touchpoint_id: int
    occurrence: int
    template_id: int
    version_id: int
    target_kind: str
    target_id: int
    channel: str
    mode: str
    due_at: datetime
    run_at: datetime
    expires_at: datetime
    attempts: int


CLAIM_COLUMNS = ", ".join(Claimed._fields)


def claim(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    limit: int,
    held_templates: Sequence[int] = (),
) -> list[Claimed]:
    """claim: atomically move up to ``limit`` due rows from scheduled to claimed,
    leased to ``owner``.

    Urgent rows first (``URGENT_MODE``: welcomes, whose code lapses in 20 s),
    through their own partial index; the rest of the batch is the due backlog
    in ``run_at`` order, exactly as without them. Both are one transaction, so a
    row is claimed once whichever of the two finds it.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets many workers claim disjoint
    batches at once. SQLite: the caller's transaction began with ``BEGIN
    IMMEDIATE`` (SQLAlchemy silently drops ``skip_locked`` there), so the whole
    statement runs under the write lock.
    """
    check("claim", S.CLAIMED)
    urgent = _claim_due(session, now, owner, lease_until, limit, held_templates, urgent_only=True)
    rest = []
    if len(urgent) < limit:
        rest = _claim_due(session, now, owner, lease_until, limit - len(urgent), held_templates)
    return sorted(urgent, key=lambda r: (r.run_at, r.id)) + sorted(
        rest, key=lambda r: (r.run_at, r.id)
    )


def claim_siblings(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    touchpoint_id: int,
    occurrence: int,
    limit: int,
    held_templates: Sequence[int] = (),
) -> list[Claimed]:
    """claim (siblings): the due task/moment rows of one touchpoint occurrence,
    up to ``limit``, so that they reach the platform as one job
    (``GATHERED_MODES``). Same fence and lease as :func:`claim`; call it in the
    claim's transaction."""
    check("claim", S.CLAIMED)
    rows = _claim_due(
        session,
        now,
        owner,
        lease_until,
        limit,
        held_templates,
        siblings=(touchpoint_id, occurrence),
    )
    return sorted(rows, key=lambda r: (r.run_at, r.id))


def _claim_due(
    session: Session,
    now: datetime,
    owner: str,
    lease_until: datetime,
    limit: int,
    held_templates: Sequence[int],
    *,
    urgent_only: bool = False,
    siblings: tuple[int, int] | None = None,
) -> list[Claimed]:
    dialect = session.get_bind().dialect.name
    held = ""
    params: dict[str, Any] = {
        "now": now,
        "owner": owner,
        "lease_until": lease_until,
        "limit": limit,
        "scheduled": S.SCHEDULED,
        "claimed": S.CLAIMED,
    }
    if held_templates:
        held = "AND template_id NOT IN :held"
        params["held"] = list(held_templates)
    lock = "FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    # The urgent condition is written out (not bound) so both databases can
    # prove it implies the partial index's and use it.
    status, index = "status = :scheduled", ""
    if urgent_only:
        status, index = URGENT_WHERE, "ix_deliveries_urgent"
    elif siblings is not None:
        status = f"{GATHER_WHERE} AND touchpoint_id = :touchpoint AND occurrence = :occurrence"
        index = "ix_deliveries_gather"
        params["touchpoint"], params["occurrence"] = siblings
    index = f"INDEXED BY {index}" if index and dialect == "sqlite" else ""
    due = f"""
            SELECT id FROM deliveries {index}
            WHERE {status} AND run_at <= :now {held}
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
        bindparam("now", type_=repository.DELIVERIES.c.run_at.type),
        bindparam("lease_until", type_=repository.DELIVERIES.c.run_at.type),
    )
    if held_templates:
        stmt = stmt.bindparams(bindparam("held", expanding=True))
    dt = repository.DELIVERIES.c.due_at.type
    typed = stmt.columns(
        repository.DELIVERIES.c.id,
        repository.DELIVERIES.c.enrollment_id,
        repository.DELIVERIES.c.touchpoint_id,
        repository.DELIVERIES.c.occurrence,
        repository.DELIVERIES.c.template_id,
        repository.DELIVERIES.c.version_id,
        repository.DELIVERIES.c.target_kind,
        repository.DELIVERIES.c.target_id,
        repository.DELIVERIES.c.channel,
        repository.DELIVERIES.c.mode,
        due_at=dt,
        run_at=dt,
        expires_at=dt,
        attempts=repository.DELIVERIES.c.attempts.type,
    )
    return [Claimed._make(row) for row in session.execute(typed, params).all()]


def renew(session: Session, *, owner: str, ids: Sequence[int], lease_until: datetime) -> int:
    """renew: extend the lease of rows ``owner`` still holds (claimed or sending)."""
    if not ids:
        return 0
    stmt = (
        update(Delivery)
        .where(repository.among(col(Delivery.id), ids, session), *_fence("renew", owner))
        .values(lease_expires_at=lease_until)
    )
    return rowcount(session.execute(stmt))


def mark_sending(
    session: Session, *, owner: str, ids: Sequence[int], lease_until: datetime
) -> set[int]:
    """mark_sending: claimed → sending just before the channel call (one attempt
    used, lease refreshed); returns the ids still held, i.e. safe to send."""
    check("mark_sending", S.SENDING)
    if not ids:
        return set()
    # One statement for the whole wave, its ids as one parameter (an array on
    # PostgreSQL, a JSON array on SQLite): an IN list renders a parameter per
    # id on every execution.
    stmt = (
        update(Delivery)
        .where(repository.among(col(Delivery.id), ids, session), *_fence("mark_sending", owner))
        .values(
            status=S.SENDING,
            attempts=col(Delivery.attempts) + 1,
            lease_expires_at=lease_until,
        )
        .returning(col(Delivery.id))
        # No ORM objects to keep in step: synchronizing them would look
        # up every returned id in the identity map (most of the cost).
        .execution_options(synchronize_session=False)
    )
    return set(session.execute(stmt).scalars().all())


def settle(session: Session, *, owner: str, outcomes: Mapping[int, Outcome], now: datetime) -> int:
    """skip / fail / miss / defer / assign_staff: outcomes decided before
    sending, claimed → final (or back to scheduled at a later ``run_at``, or
    into a staff member's inbox). One statement per transition."""
    by_name: dict[str, dict[int, Outcome]] = {}
    for delivery_id, outcome in outcomes.items():
        name = _SETTLE.get(outcome.status)
        if name is None:
            raise TransitionRefused(f"a claimed delivery cannot be settled as {outcome.status!r}")
        by_name.setdefault(name, {})[delivery_id] = outcome
    return sum(_write(session, name, owner, part, now) for name, part in by_name.items())


def record_outcome(
    session: Session, *, owner: str, outcomes: Mapping[int, Outcome], now: datetime
) -> int:
    """record_outcome: sending → sent / failed / unknown / skipped, or scheduled to retry;
    then resolve_unknown for rows a reaper marked unknown meanwhile (the lease
    owner's late outcome is the truth, provider id included)."""
    written = _write(session, "record_outcome", owner, outcomes, now)
    if written < len(outcomes):
        late = {i: o for i, o in outcomes.items() if o.status != S.UNKNOWN}
        written += resolve_unknown(session, owner=owner, outcomes=late, now=now)
    return written


def resolve_unknown(
    session: Session, *, owner: str, outcomes: Mapping[int, Outcome], now: datetime
) -> int:
    """resolve_unknown: unknown → the true outcome, from the lease owner only."""
    return _write(session, "resolve_unknown", owner, outcomes, now)


def _write(
    session: Session, name: str, owner: str, outcomes: Mapping[int, Outcome], now: datetime
) -> int:
    if not outcomes:
        return 0
    check(name, *{o.status for o in outcomes.values()})
    if session.get_bind().dialect.name == "postgresql":
        return len(_write_batch(session, owner, starts(name), outcomes, now))
    params = []
    for delivery_id, o in outcomes.items():
        terminal = o.status not in (S.SCHEDULED, S.AWAITING_STAFF)
        params.append(
            {
                "b_id": delivery_id,
                "b_status": o.status,
                "b_reason": clip_reason(o.reason),
                "b_provider": o.provider_message_id,
                "b_sent_at": now if o.sent else None,
                "b_finished_at": now if terminal else None,
                "b_run_at": o.run_at or now,
                "b_keep_run_at": o.run_at is None,
                "b_expires_at": o.expires_at or now,
                "b_keep_expires_at": o.expires_at is None,
                "b_rendered": o.rendered,
            }
        )
    # One ``UPDATE ... WHERE id = ?`` for many parameter sets: on SQLite one
    # prepared statement stepped per row, each row found by its primary key.
    table = repository.DELIVERIES
    stmt = (
        table.update()
        .where(
            table.c.id == bindparam("b_id"),
            table.c.lease_owner == owner,
            # equalities, not IN: execute_many compiles this once for SQLite
            or_(*(table.c.status == start for start in starts(name))),
        )
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            provider_message_id=bindparam("b_provider"),
            sent_at=bindparam("b_sent_at", type_=table.c.sent_at.type),
            finished_at=bindparam("b_finished_at", type_=table.c.finished_at.type),
            run_at=case(
                (bindparam("b_keep_run_at"), table.c.run_at),
                else_=bindparam("b_run_at", type_=table.c.run_at.type),
            ),
            expires_at=case(
                (bindparam("b_keep_expires_at"), table.c.expires_at),
                else_=bindparam("b_expires_at", type_=table.c.expires_at.type),
            ),
            rendered=bindparam("b_rendered", type_=table.c.rendered.type),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return repository.execute_many(session.connection(), stmt, params)


# PostgreSQL: one ``UPDATE ... FROM unnest(...)`` for a batch's outcomes, each
# column one array (sent in binary: %b), instead of an ``UPDATE ... WHERE id =``
# per row: per outcome about half the server's CPU and a third of the worker's.
# The plan must find each row by its primary key, whatever the statistics say:
# * the fence (owner, start statuses) is carried by every unnested row and
#   compared as a join condition, never as a constant. With ``status =
#   'sending'`` a constant, statistics taken when nothing was in flight made
#   the planner take the few rows it expected in that status as the outer loop
#   and scan the batch once for each (5-20x slower per outcome);
# * the arrays reach ``unnest`` through a one-row MATERIALIZED CTE, so the
#   planner does not know the batch's size. Knowing it, on a table it has never
#   analyzed (it then guesses a seventh of the rows) it hashed the whole table
#   for every batch instead of looking up the batch's rows.
_WRITE_BATCH = """
WITH batch AS MATERIALIZED (
    SELECT %b::bigint[] AS id, %b::varchar[] AS status, %b::varchar[] AS reason,
           %b::varchar[] AS provider, %b::timestamptz[] AS sent_at,
           %b::timestamptz[] AS finished_at, %b::timestamptz[] AS run_at,
           %b::timestamptz[] AS expires_at, %b::text[] AS rendered,
           %b::varchar[] AS owner, %b::text[] AS starts
)
UPDATE deliveries AS d SET
    status = v.status, reason = v.reason, provider_message_id = v.provider,
    sent_at = v.sent_at, finished_at = v.finished_at,
    run_at = coalesce(v.run_at, d.run_at), expires_at = coalesce(v.expires_at, d.expires_at),
    rendered = v.rendered::json, lease_owner = NULL, lease_expires_at = NULL
FROM batch, unnest(
    batch.id, batch.status, batch.reason, batch.provider, batch.sent_at, batch.finished_at,
    batch.run_at, batch.expires_at, batch.rendered, batch.owner, batch.starts
) AS v(id, status, reason, provider, sent_at, finished_at, run_at, expires_at, rendered, owner,
       starts)
WHERE d.id = v.id AND d.lease_owner = v.owner AND d.status = ANY(string_to_array(v.starts, ','))
RETURNING d.id
"""


def _write_batch(
    session: Session,
    owner: str,
    start: Sequence[str],
    outcomes: Mapping[int, Outcome],
    now: datetime,
) -> set[int]:
    """:func:`_write` on PostgreSQL, the same values row for row; returns the
    ids written (the others failed the fence and are untouched)."""
    columns: tuple[list[Any], ...] = tuple([] for _ in range(9))
    ids, status, reason, provider, sent_at, finished_at, run_at, expires_at, rendered = columns
    for delivery_id, o in outcomes.items():
        ids.append(delivery_id)
        status.append(o.status)
        reason.append(clip_reason(o.reason))
        provider.append(o.provider_message_id)
        sent_at.append(now if o.sent else None)
        finished_at.append(None if o.status in (S.SCHEDULED, S.AWAITING_STAFF) else now)
        run_at.append(_aware(o.run_at))
        expires_at.append(_aware(o.expires_at))
        rendered.append(None if o.rendered is None else json.dumps(o.rendered, ensure_ascii=False))
    fence = ([owner] * len(ids), [",".join(start)] * len(ids))
    result = session.connection().exec_driver_sql(_WRITE_BATCH, (*columns, *fence))
    return set(result.scalars().all())


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to a UTC column")
    return value


def release(session: Session, *, owner: str, ids: Sequence[int] | None = None) -> int:
    """release: claimed → scheduled for rows ``owner`` holds but has not handed
    to a channel (graceful stop); all of them, or only ``ids``."""
    check("release", S.SCHEDULED)
    conditions = _fence("release", owner)
    if ids is not None:
        if not ids:
            return 0
        conditions.append(repository.among(col(Delivery.id), ids, session))
    stmt = (
        update(Delivery)
        .where(*conditions)
        .values(status=S.SCHEDULED, lease_owner=None, lease_expires_at=None)
    )
    return rowcount(session.execute(stmt))


def unmark(session: Session, *, owner: str, ids: Sequence[int]) -> int:
    """unmark: sending → scheduled for rows ``owner`` marked as next in line but
    never handed to a channel (a stop came first); the attempt is given back.
    Only the owner knows the call never started, so only it may do this."""
    check("unmark", S.SCHEDULED)
    if not ids:
        return 0
    stmt = (
        update(Delivery)
        .where(repository.among(col(Delivery.id), ids, session), *_fence("unmark", owner))
        .values(
            status=S.SCHEDULED,
            attempts=col(Delivery.attempts) - 1,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return rowcount(session.execute(stmt))


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


# -- decisions of the flows (archive, exit, version moves) ----------------------


def cancel(
    session: Session,
    *,
    reason: str,
    now: datetime,
    template_id: int | None = None,
    enrollment_ids: Sequence[int] | None = None,
    delivery_ids: Sequence[int] | None = None,
) -> int:
    """cancel: rows not yet handed to a channel (scheduled or claimed) →
    cancelled, selected by template, enrollments and/or delivery ids."""
    conditions = _fence("cancel", None)
    if template_id is not None:
        conditions.append(col(Delivery.template_id) == template_id)
    if enrollment_ids is not None:
        conditions.append(col(Delivery.enrollment_id).in_(list(enrollment_ids)))
    if delivery_ids is not None:
        conditions.append(col(Delivery.id).in_(list(delivery_ids)))
    stmt = (
        update(Delivery)
        .where(and_(*conditions))
        .values(
            status=S.CANCELLED,
            reason=clip_reason(reason),
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return rowcount(session.execute(stmt))


_REPOINTABLE = {"touchpoint_id", "version_id", "channel", "mode", "due_at", "run_at"}
_REPOINTABLE |= {"expires_at", "status", "reason", "finished_at"}


def repoint(session: Session, delivery_id: int, values: Mapping[str, Any]) -> int:
    """repoint: move a still-scheduled row to another version's touchpoint (due
    times recomputed; ``status`` may become skipped). A claim may race this:
    then the row goes out on the version it was claimed with (0 rows)."""
    unknown = set(values) - _REPOINTABLE
    if unknown:
        raise TransitionRefused(f"repoint cannot change {', '.join(sorted(unknown))}")
    if "status" in values:
        check("repoint", values["status"])
    stmt = (
        update(Delivery)
        .where(col(Delivery.id) == delivery_id, *_fence("repoint", None))
        .values(**values)
    )
    return rowcount(session.execute(stmt))


# -- mass-send tasks (scheduler.outbox.tasks) -------------------------------------


def _task_fence(task_id: str) -> ColumnElement[bool]:
    return and_(
        col(Delivery.status) == S.SENT,
        col(Delivery.provider_message_id) == task_id,
    )


def confirm_task(session: Session, task_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """A staff member confirmed the mass send: the sent row's reason and
    ``sent_at`` become the platform's (no status change)."""
    if not rows:
        return
    d = repository.DELIVERIES.c
    session.connection().execute(
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), _task_fence(task_id))
        .values(reason=bindparam("b_reason"), sent_at=bindparam("b_sent_at", type_=d.sent_at.type)),
        list(rows),
    )


def task_failed(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_failed: sent → failed with the platform's reason (``b_id``, ``b_reason``)."""
    if not rows:
        return 0
    check("task_failed", S.FAILED)
    d = repository.DELIVERIES.c
    stmt = (
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), d.status == S.SENT, d.provider_message_id == task_id)
        .values(status=S.FAILED, reason=bindparam("b_reason"), sent_at=None, finished_at=now)
    )
    return repository.execute_many(session.connection(), stmt, rows)


def task_expired(
    session: Session, task_id: str, ids: Sequence[int], reason: str, now: datetime
) -> int:
    """task_expired: sent → unknown when nobody confirmed the task in time."""
    check("task_expired", S.UNKNOWN)
    count = 0
    for chunk in repository.chunked(list(ids), 900):
        count += rowcount(
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(list(chunk)), _task_fence(task_id))
                .values(status=S.UNKNOWN, reason=clip_reason(reason), finished_at=now)
            )
        )
    return count


def task_skipped(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_skipped: sent → skipped with the platform's reason (``b_id``, ``b_reason``)."""
    return _task_settle(session, "task_skipped", S.SKIPPED, task_id, rows, now)


def task_cancelled(
    session: Session, task_id: str, rows: Sequence[dict[str, Any]], now: datetime
) -> int:
    """task_cancelled: sent → cancelled, the task recalled before confirmation."""
    return _task_settle(session, "task_cancelled", S.CANCELLED, task_id, rows, now)


def _task_settle(
    session: Session,
    name: str,
    status: str,
    task_id: str,
    rows: Sequence[dict[str, Any]],
    now: datetime,
) -> int:
    if not rows:
        return 0
    check(name, status)
    d = repository.DELIVERIES.c
    stmt = (
        repository.DELIVERIES.update()
        .where(d.id == bindparam("b_id"), d.status == S.SENT, d.provider_message_id == task_id)
        .values(status=status, reason=bindparam("b_reason"), sent_at=None, finished_at=now)
    )
    return repository.execute_many(session.connection(), stmt, rows)


# -- staff tasks (scheduler.staff) ------------------------------------------------


def _staff_move(
    session: Session, name: str, to: str, ids: Sequence[int], values: dict[str, Any]
) -> set[int]:
    check(name, to)
    moved: set[int] = set()
    for chunk in repository.chunked(list(ids), 900):
        stmt = (
            update(Delivery)
            .where(col(Delivery.id).in_(list(chunk)), *_fence(name, None))
            .values(status=to, **values)
            .returning(col(Delivery.id))
        )
        moved.update(session.execute(stmt).scalars())
    return moved


def staff_done(
    session: Session, ids: Sequence[int], *, acted_at: datetime, reason: str
) -> set[int]:
    """staff_done: awaiting_staff → done; ``sent_at`` is when the staff member
    said they sent it (frequency caps count it). Returns the ids moved."""
    return _staff_move(
        session,
        "staff_done",
        S.DONE,
        ids,
        {"sent_at": acted_at, "finished_at": acted_at, "reason": clip_reason(reason)},
    )


def staff_skip(
    session: Session, ids: Sequence[int], *, acted_at: datetime, reason: str
) -> set[int]:
    """staff_skip: awaiting_staff → skipped_by_staff with the staff member's reason."""
    return _staff_move(
        session,
        "staff_skip",
        S.SKIPPED_BY_STAFF,
        ids,
        {"finished_at": acted_at, "reason": clip_reason(reason)},
    )


def staff_miss(session: Session, ids: Sequence[int], *, now: datetime, reason: str) -> set[int]:
    """staff_miss: awaiting_staff → missed once the task's deadline passed."""
    return _staff_move(
        session, "staff_miss", S.MISSED, ids, {"finished_at": now, "reason": clip_reason(reason)}
    )
