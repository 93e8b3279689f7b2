"""Transitions of a worker's own rows: claim, renew, mark ``sending``,
settle before the send, record the outcome, release, unmark.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache
from itertools import chain
from typing import Any, NamedTuple

from sqlalchemy import bindparam, text, update
from sqlmodel import Session, col

from scheduler.outbox import repository
from scheduler.outbox.models import (
    GATHER_WHERE,
    URGENT_WHERE,
    Delivery,
    clip_reason,
)
from scheduler.outbox.transitions.machine import (
    _SETTLE,
    Outcome,
    S,
    TransitionRefused,
    _fence,
    check,
    starts,
)
from sopbot.db import rowcount
from sopbot.sql import json_text, sqlite_instant

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
    # On SQLite the status is checked row by row (``+status``): looked up through
    # the status index, every claim read the whole scheduled backlog.
    # On PostgreSQL ``id = ANY(ARRAY(...))``, not ``id IN (SELECT id FROM due)``:
    # on a table of 22,000 rows the planner hashed the batch and read the whole
    # table for it (6 ms of a 32 ms claim of 1,000 rows).
    prefix, found = "", f"id IN ({due})"
    if dialect == "postgresql":
        prefix, found = f"WITH due AS MATERIALIZED ({due})", "id = ANY(ARRAY(SELECT id FROM due))"
    stmt = text(
        f"""
        {prefix}
        UPDATE deliveries SET status = :claimed, lease_owner = :owner,
               lease_expires_at = :lease_until
        WHERE {found} AND {"+" if dialect == "sqlite" else ""}status = :scheduled
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
        .where(
            repository.among(col(Delivery.id), ids, session), *_fence("renew", owner, by_id=session)
        )
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
        .where(
            repository.among(col(Delivery.id), ids, session),
            *_fence("mark_sending", owner, by_id=session),
        )
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
        rows = _rows(outcomes, now, _aware, _json)
        return len(_write_batch(session, owner, starts(name), rows))
    return _write_sqlite(
        session, owner, starts(name), _rows(outcomes, now, sqlite_instant, json_text)
    )


def _rows(
    outcomes: Mapping[int, Outcome],
    now: datetime,
    instant: Callable[[datetime], Any],
    as_json: Callable[[Any], str],
) -> list[tuple[Any, ...]]:
    """Each outcome's row as every form of the statement below writes it: id,
    status, reason, provider message id, sent_at, finished_at, run_at and
    expires_at (None: unchanged), rendered; instants and JSON as ``instant``
    and ``as_json`` give them to the database's driver."""
    at = instant(now)
    return [
        (
            delivery_id,
            o.status,
            clip_reason(o.reason),
            o.provider_message_id,
            at if o.sent else None,
            None if o.status in (S.SCHEDULED, S.AWAITING_STAFF) else at,
            None if o.run_at is None else instant(o.run_at),
            None if o.expires_at is None else instant(o.expires_at),
            None if o.rendered is None else as_json(o.rendered),
        )
        for delivery_id, o in outcomes.items()
    ]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write_sqlite(
    session: Session, owner: str, fence: list[str], rows: list[tuple[Any, ...]]
) -> int:
    """SQLite 3.33+: up to 400 outcomes per ``UPDATE ... FROM (VALUES ...)``,
    each row found by its primary key and fenced by owner and status. Older
    SQLite: the same values, one ``UPDATE ... WHERE id = ?`` stepped per row."""
    connection = session.connection()
    if not UPDATE_FROM:
        by_row = [(*row[1:], row[0], owner, *fence) for row in rows]
        return rowcount(connection.exec_driver_sql(_update_by_id(len(fence)), by_row))
    written = 0
    for start in range(0, len(rows), _VALUES_ROWS):
        chunk = rows[start : start + _VALUES_ROWS]
        params = (*chain.from_iterable(chunk), owner, *fence)
        written += rowcount(
            connection.exec_driver_sql(_update_from_values(len(chunk), len(fence)), params)
        )
    return written


_VALUES_ROWS = 400
# ``UPDATE ... FROM`` is SQLite 3.33+; older ones step one UPDATE per outcome.
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)

# What both SQLite statements set, from a row's values after its id (``_rows``):
# a VALUES row's columns (column2, column3, ...) or parameters.
_SET_SQLITE = (
    "status = {0}, reason = {1}, provider_message_id = {2}, sent_at = {3}, finished_at = {4}, "
    "run_at = coalesce({5}, deliveries.run_at), expires_at = coalesce({6}, deliveries.expires_at), "
    "rendered = {7}, lease_owner = NULL, lease_expires_at = NULL"
)


@cache
def _update_from_values(rows: int, fence: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    statuses = ", ".join(["?"] * fence)
    assignments = _SET_SQLITE.format(*(f"b.column{i}" for i in range(2, 10)))
    # No WITH: the sqlite3 module counts changed rows only for a statement
    # that starts with UPDATE.
    return (
        f"UPDATE deliveries SET {assignments} FROM (VALUES {values}) AS b "
        "WHERE deliveries.id = b.column1 AND deliveries.lease_owner = ? "
        f"AND deliveries.status IN ({statuses})"
    )


@cache
def _update_by_id(fence: int) -> str:
    statuses = ", ".join(["?"] * fence)
    assignments = _SET_SQLITE.format(*["?"] * 8)
    return (
        f"UPDATE deliveries SET {assignments} "
        f"WHERE id = ? AND lease_owner = ? AND status IN ({statuses})"
    )


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
    session: Session, owner: str, start: Sequence[str], rows: list[tuple[Any, ...]]
) -> set[int]:
    """:func:`_write` on PostgreSQL; returns the ids written (the others failed
    the fence and are untouched)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    fence = ([owner] * len(rows), [",".join(start)] * len(rows))
    result = session.connection().exec_driver_sql(_WRITE_BATCH, (*columns, *fence))
    return set(result.scalars().all())


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to a UTC column")
    return value


def release(session: Session, *, owner: str, ids: Sequence[int] | None = None) -> int:
    """release: claimed → scheduled for rows ``owner`` holds but has not handed
    to a channel (graceful stop); all of them, or only ``ids``."""
    check("release", S.SCHEDULED)
    conditions = _fence("release", owner, by_id=session if ids is not None else None)
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
        .where(
            repository.among(col(Delivery.id), ids, session),
            *_fence("unmark", owner, by_id=session),
        )
        .values(
            status=S.SCHEDULED,
            attempts=col(Delivery.attempts) - 1,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return rowcount(session.execute(stmt))
