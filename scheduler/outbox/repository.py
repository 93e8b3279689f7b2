"""Set-based SQL for the outbox: bulk inserts that ignore duplicates, IN-lists
and executemany. (Status changes, the claim included, are in
``scheduler.outbox.transitions``.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    ColumnElement,
    Table,
    any_,
    func,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.outbox.models import Delivery, Enrollment
from sopbot.db import UTCDateTime, rowcount

DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS: Table = Enrollment.__table__  # type: ignore[attr-defined]

CHUNK = 5000


def insert_ignore(
    session: Session | Connection, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` in chunks (executemany).

    This is the bulk path of enrollment (a million rows for a large segment), so
    on SQLite it skips SQLAlchemy's per-value processing: rows go to the driver
    as tuples with datetimes already in the text form ``UTCDateTime`` stores.
    """
    if not rows:
        return
    conn = session.connection() if isinstance(session, Session) else session
    if conn.dialect.name == "sqlite":
        columns = list(rows[0])
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
        )
        converters = [_sqlite_converter(table.c[name].type) for name in columns]
        # Many rows share instants (created_at, due_at == run_at): format each once.
        stamp = memoized(sqlite_instant)
        converters = [stamp if c is sqlite_instant else c for c in converters]
        for start in range(0, len(rows), CHUNK):
            params = [
                tuple(
                    value if value is None or convert is None else convert(value)
                    for convert, value in zip(converters, row.values(), strict=True)
                )
                for row in rows[start : start + CHUNK]
            ]
            conn.exec_driver_sql(sql, params)  # type: ignore[arg-type]
        return
    stmt = postgresql.insert(table).on_conflict_do_nothing()
    for start in range(0, len(rows), CHUNK):
        conn.execute(stmt, list(rows[start : start + CHUNK]))


def among(column: Any, ids: Sequence[int], conn: Session | Connection) -> ColumnElement[bool]:
    """``column IN ids`` with the ids as one parameter, whatever their number: a
    JSON array read by ``json_each`` on SQLite, an array on PostgreSQL. (A plain
    ``IN`` renders a parameter per id on every execution.)"""
    conn = conn.connection() if isinstance(conn, Session) else conn
    values = [int(i) for i in ids]
    if conn.dialect.name == "sqlite":
        each = func.json_each(json.dumps(values)).table_valued("value")
        return column.in_(select(each.c.value))  # type: ignore[no-any-return]
    return column == any_(literal(values, ARRAY(BigInteger)))  # type: ignore[no-any-return]


def memoized(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert`` remembering its answers: bulk rows share a few instants."""
    memo: dict[Any, Any] = {}

    def cached(value: Any) -> Any:
        out = memo.get(value)
        if out is None:
            out = memo[value] = convert(value)
        return out

    return cached


def instant_param(conn: Session | Connection) -> Callable[[datetime], Any]:
    """How a UTC instant is passed to :func:`insert_rows` on this connection's
    database: the stored text on SQLite, the datetime itself on PostgreSQL."""
    conn = conn.connection() if isinstance(conn, Session) else conn
    return sqlite_instant if conn.dialect.name == "sqlite" else _same


def _same(value: datetime) -> datetime:
    return value


def sqlite_instant(value: datetime) -> str:
    """The text ``UTCDateTime`` stores on SQLite, fast for values already in UTC."""
    if value.tzinfo is UTC:
        return value.isoformat(" ", "microseconds")[:26]
    return _sqlite_datetime(value)


def insert_rows(
    conn: Session | Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of ready tuples, the bulk path of
    enrollment: instants already passed through :func:`instant_param`, no JSON.

    SQLite: one ``executemany`` per chunk straight to the driver. PostgreSQL:
    ``INSERT ... SELECT`` over ``unnest`` of one array per column, a single
    statement per chunk instead of a round trip per row.
    """
    if not rows:
        return
    conn = conn.connection() if isinstance(conn, Session) else conn
    names = ", ".join(columns)
    if conn.dialect.name == "sqlite":
        sql = (
            f"INSERT INTO {table.name} ({names}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
        )
        for start in range(0, len(rows), CHUNK):
            conn.exec_driver_sql(sql, list(rows[start : start + CHUNK]))  # type: ignore[arg-type]
        return
    types = [_pg_array_type(table.c[name].type, conn) for name in columns]
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    sql = (
        f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    )
    chunk = CHUNK * 4
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*part, strict=True)))


def _pg_array_type(column_type: Any, conn: Connection) -> str:
    if isinstance(column_type, UTCDateTime):
        return "timestamptz"
    return str(column_type.compile(dialect=conn.dialect))


def _sqlite_converter(column_type: Any) -> Any:
    if isinstance(column_type, UTCDateTime):
        return sqlite_instant
    if isinstance(column_type, JSON):
        return lambda value: json.dumps(value, ensure_ascii=False)
    return None


def _sqlite_datetime(value: datetime) -> str:
    # The exact text SQLAlchemy's SQLite DATETIME writes, so comparisons in SQL
    # (always against parameters bound through UTCDateTime) order correctly.
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def chunked(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def execute_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Run one statement for many parameter sets (an executemany).

    On SQLite the statement is compiled once and the driver gets plain tuples:
    SQLAlchemy's per-row parameter processing costs more than the UPDATE itself
    on the dispatch hot path. Elsewhere SQLAlchemy's own executemany is used.
    """
    if not rows:
        return 0
    if conn.dialect.name != "sqlite":
        return rowcount(conn.execute(stmt, list(rows)))
    compiled = stmt.compile(dialect=conn.dialect)
    names = compiled.positiontup or []
    fixed = compiled.construct_params(rows[0])
    converters = [_sqlite_converter(compiled.binds[name].type) for name in names]
    stamp = memoized(sqlite_instant)  # the batch's rows share "now"
    converters = [stamp if c is sqlite_instant else c for c in converters]
    params = []
    for row in rows:
        values = []
        for name, convert in zip(names, converters, strict=True):
            value = row[name] if name in row else fixed[name]
            values.append(value if value is None or convert is None else convert(value))
        params.append(tuple(values))
    return rowcount(conn.exec_driver_sql(compiled.string, params))  # type: ignore[arg-type]
