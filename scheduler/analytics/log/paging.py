"""Keyset (cursor) pages of the delivery log.

A page orders by ``(sort key, id)`` and continues strictly after the last row of
the previous page, so a page deep into millions of rows costs what the first one
does. ``due_at`` never changes once a delivery exists, which is why it is the
default sort; ``sent_at`` is empty until a delivery is sent, so that sort lists
the sent rows first and then the unsent ones by id (NULLS LAST, both directions).

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

from sqlalchemy import ColumnElement, Select, literal, select, tuple_
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.analytics.log.entries import Labels, LogPage, LogRow, log_columns
from scheduler.analytics.log.filters import (
    MAX_ID,
    MAX_PAGE,
    InvalidLogQuery,
    LogFilter,
    check_sort,
)
from scheduler.outbox.repository import DELIVERIES
from sopbot.db import is_sqlite


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row with this sort key and id."""

    sort: str
    order: str
    key: datetime | None
    id: int

    def encode(self) -> str:
        key = self.key.astimezone(UTC).isoformat() if self.key is not None else None
        raw = json.dumps([1, self.sort, self.order, key, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str, *, sort: str, order: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, c_sort, c_order, key, row_id = json.loads(raw)
            if version != 1 or not isinstance(row_id, int) or isinstance(row_id, bool):
                raise ValueError
            if not 0 <= row_id <= MAX_ID:
                raise ValueError
            parsed = None if key is None else datetime.fromisoformat(key)
            if parsed is not None and parsed.tzinfo is None:
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            ) from None
        if (c_sort, c_order) != (sort, order):
            raise InvalidLogQuery(
                "cursor",
                f"cursor belongs to sort={c_sort} order={c_order}, not sort={sort} order={order}",
            )
        if parsed is None and sort == "due_at":
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            )
        return cls(c_sort, c_order, parsed, row_id)


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
    columns: tuple[Any, ...] | None = None,
) -> list[Segment]:
    """The log from just after ``after``, as ordered segments read one after the
    other: one for the due sort; for the sent sort, the sent rows by (sent_at,
    id), then the unsent ones by id. ``columns``: those of ``log_columns``."""
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
    sent = select(*columns).where(*base, DELIVERIES.c.sent_at.is_not(None))
    unsent = select(*columns).where(*base, DELIVERIES.c.sent_at.is_(None))
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
) -> LogPage:
    """One page of the log and the cursor of the next (``None`` on the last)."""
    check_sort(sort, order)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidLogQuery("limit", f"limit must be between 1 and {MAX_PAGE}")
    after = Cursor.decode(cursor, sort=sort, order=order) if cursor else None
    sqlite = dialect_is_sqlite(conn)
    rows: list[LogRow] = []
    for segment in segments(flt, sqlite=sqlite, sort=sort, order=order, after=after):
        rows += conn.execute(segment.page(limit + 1 - len(rows))).all()
        if len(rows) > limit:
            break
    more = len(rows) > limit
    entries = Labels(conn, sqlite=sqlite).entries(rows[:limit])
    next_cursor = None
    if more:
        last = entries[-1]
        next_cursor = Cursor(sort, order, getattr(last, sort), last.id).encode()
    return LogPage(entries, next_cursor)
