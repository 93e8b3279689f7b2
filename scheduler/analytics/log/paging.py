"""Keyset (cursor) pages of the delivery log, stable while the log changes.

A page orders by ``(sort key, id)`` and continues strictly after the last row of
the previous page, so a page deep into millions of rows costs what the first one
does, and a walk from the first page to the last lists every row that existed
when it began exactly once, whatever is inserted or sent meanwhile:

* ``due_at`` never changes once a delivery exists: the default sort.
* ``sent_at`` is empty until a delivery is sent, and a row that is sent during a
  walk would jump from the unsent part to the sent part — into pages already
  read (409 of 6,000 rows went missing that way). So a walk fixes its instant
  ``as_of`` (the time of its first page, carried in the cursor): the sent part
  is the rows sent *and recorded* before it (``sent_at IS NOT NULL AND
  COALESCE(finished_at, sent_at) < as_of``), by ``(sent_at, id)``; every other
  row follows by id (NULLS LAST, both directions). A row's part and key cannot
  change during the walk: ``sent`` is final, and an outcome is recorded with the
  time it is written (a mass-send task confirmed by staff keeps the staff's send
  time in ``sent_at`` but is recorded when confirmed). A row sent during the walk
  is listed among the then-unsent ones, with its new status; a new walk lists it
  by its send time. This relies on the clocks of sopbot's processes agreeing, as
  its leases already do.

Query plans (SQLite, 2 million rows; see ``benchmarks/log.py``): the sort column's
index drives every page — ``ix_deliveries_due_at`` or, with a template filter,
``ix_deliveries_template_due_at``; ``ix_deliveries_sent_at`` (partial) for the
sent-time sort.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, not_, select, tuple_
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.analytics.log.entries import Labels, LogEntry, LogPage, LogRow, log_columns
from scheduler.analytics.log.filters import (
    MAX_ID,
    MAX_PAGE,
    InvalidLogQuery,
    LogFilter,
    check_sort,
)
from scheduler.outbox.repository import DELIVERIES
from sopbot.clock import SystemClock
from sopbot.db import is_sqlite


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row with this sort key and id.
    ``as_of``: the instant the walk began (the sent-time sort; see the module
    docstring)."""

    sort: str
    order: str
    key: datetime | None
    id: int
    as_of: datetime | None = None

    def encode(self) -> str:
        fields: list[Any] = [1, self.sort, self.order, _iso(self.key), self.id]
        if self.as_of is not None:
            fields = [2, *fields[1:], _iso(self.as_of)]
        raw = json.dumps(fields, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str, *, sort: str, order: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, c_sort, c_order, key, row_id, *rest = json.loads(raw)
            if (version, len(rest)) not in ((1, 0), (2, 1)):
                raise ValueError
            if not isinstance(row_id, int) or isinstance(row_id, bool):
                raise ValueError
            if not 0 <= row_id <= MAX_ID:
                raise ValueError
            parsed, as_of = _instant(key), _instant(rest[0] if rest else None)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            ) from None
        if (c_sort, c_order) != (sort, order):
            raise InvalidLogQuery(
                "cursor",
                f"cursor belongs to sort={c_sort} order={c_order}, not sort={sort} order={order}",
            )
        if (parsed is None and sort == "due_at") or ((as_of is None) != (sort == "due_at")):
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            )
        return cls(c_sort, c_order, parsed, row_id, as_of)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _instant(text: Any) -> datetime | None:
    if text is None:
        return None
    parsed = datetime.fromisoformat(text)  # TypeError or ValueError for anything else
    if parsed.tzinfo is None:
        raise ValueError
    return parsed


class Segment:
    """One ordered run of the log: a statement and the key it is ordered by."""

    def __init__(self, stmt: Select[Any], key: tuple[Any, ...], desc: bool) -> None:
        self.stmt = stmt.order_by(*(c.desc() if desc else c.asc() for c in key))

    def page(self, limit: int) -> Select[Any]:
        return self.stmt.limit(limit)

    def stream(self, conn: Connection, batch_size: int) -> Iterator[list[LogRow]]:
        """The rows in batches, from a server-side cursor."""
        streaming = conn.execution_options(stream_results=True, yield_per=batch_size)
        for batch in streaming.execute(self.stmt).partitions():
            yield list(batch)


def segments(
    flt: LogFilter,
    *,
    sqlite: bool,
    sort: str,
    order: str,
    after: Cursor | None,
    as_of: datetime | None = None,
    columns: tuple[Any, ...] | None = None,
) -> list[Segment]:
    """The log from just after ``after``, as ordered segments read one after the
    other: one for the due sort; for the sent sort, the sent rows by (sent_at,
    id), then the others by id. ``as_of``: a walk's instant (see the module
    docstring); None for a read in one snapshot, where every sent row is in the
    sent part. ``columns``: those of ``log_columns``."""
    desc = order == "desc"
    columns = columns or log_columns(sqlite)

    def beyond(keys: tuple[Any, ...], values: tuple[Any, ...]) -> ColumnElement[bool]:
        typed = [literal(v, c.type) for c, v in zip(keys, values, strict=True)]
        return tuple_(*keys) < tuple_(*typed) if desc else tuple_(*keys) > tuple_(*typed)

    if sort == "due_at":
        key = (DELIVERIES.c.due_at, DELIVERIES.c.id)
        where = flt.conditions(sqlite=sqlite, sort=sort)
        if after is not None:
            where.append(beyond(key, (after.key, after.id)))
        return [Segment(select(*columns).where(*where), key, desc)]
    base = flt.conditions(sqlite=sqlite, sort=sort)
    sent_key, id_key = (DELIVERIES.c.sent_at, DELIVERIES.c.id), (DELIVERIES.c.id,)
    is_sent: ColumnElement[bool] = DELIVERIES.c.sent_at.is_not(None)
    if as_of is not None:
        recorded = func.coalesce(DELIVERIES.c.finished_at, DELIVERIES.c.sent_at)
        is_sent = and_(is_sent, recorded < literal(as_of, DELIVERIES.c.finished_at.type))
    sent = select(*columns).where(*base, is_sent)
    unsent = select(*columns).where(*base, not_(is_sent))
    if after is None:
        return [Segment(sent, sent_key, desc), Segment(unsent, id_key, desc)]
    if after.key is None:  # already among the unsent rows
        return [Segment(unsent.where(beyond(id_key, (after.id,))), id_key, desc)]
    return [
        Segment(sent.where(beyond(sent_key, (after.key, after.id))), sent_key, desc),
        Segment(unsent, id_key, desc),
    ]


def dialect_is_sqlite(conn: Connection | Session) -> bool:
    return is_sqlite(conn.get_bind() if isinstance(conn, Session) else conn)


def list_page(
    conn: Connection | Session,
    flt: LogFilter,
    *,
    sort: str = "due_at",
    order: str = "desc",
    limit: int = 50,
    cursor: str | None = None,
    now: datetime | None = None,
) -> LogPage:
    """One page of the log and the cursor of the next (``None`` on the last).
    ``now``: the current time (default: the system clock), which a walk in
    sent-time order starts from (see the module docstring)."""
    check_sort(sort, order)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidLogQuery("limit", f"limit must be between 1 and {MAX_PAGE}")
    after = Cursor.decode(cursor, sort=sort, order=order) if cursor else None
    as_of = None
    if sort == "sent_at":
        as_of = after.as_of if after is not None else (now or SystemClock().now())
    sqlite = dialect_is_sqlite(conn)
    rows: list[LogRow] = []
    for segment in segments(flt, sqlite=sqlite, sort=sort, order=order, after=after, as_of=as_of):
        rows += conn.execute(segment.page(limit + 1 - len(rows))).all()
        if len(rows) > limit:
            break
    more = len(rows) > limit
    entries = Labels(conn, sqlite=sqlite).entries(rows[:limit])
    next_cursor = None
    if more:
        last = entries[-1]
        key = last.due_at if sort == "due_at" else _sent_key(last, as_of)
        next_cursor = Cursor(sort, order, key, last.id, as_of).encode()
    return LogPage(entries, next_cursor)


def _sent_key(entry: LogEntry, as_of: datetime | None) -> datetime | None:
    """An entry's key in the sent-time order of a walk begun at ``as_of``: its
    send time if it is in the sent part, None if among the others."""
    if entry.sent_at is None or as_of is None:
        return entry.sent_at
    return entry.sent_at if (entry.finished_at or entry.sent_at) < as_of else None
