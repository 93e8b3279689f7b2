"""SQL helpers every domain shares, defined once: bulk inserts that ignore
duplicates, chunking, an IN list of any length, how a read sees one snapshot,
and how a predicate keeps SQLite's planner on the index that gives the wanted
order.

They live here, beside the engine and the session, because every package may
import ``sopbot`` and none of them knows a domain's tables. Table aliases and
helpers that name tables live with the tables' domain instead:
``scheduler.outbox.repository`` (deliveries, enrollments) and
``audiences.tables`` (contacts, groups, tags, staff accounts).
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression
from sqlmodel import Session

from sopbot.db import UTCDateTime, defer_wal_checkpoint, reader, rowcount

CHUNK = 5000


def chunked(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size`` (statements with a bounded number
    of parameters, transactions of a bounded size)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _connection(conn: Session | Connection) -> Connection:
    return conn.connection() if isinstance(conn, Session) else conn


def insert_of(conn: Session | Connection | Engine, table: Table) -> Any:
    """``INSERT INTO table`` in the dialect's own form, the one that has
    ``on_conflict_do_nothing`` (SQLite and PostgreSQL alike)."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(conn: Session | Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """``INSERT ... ON CONFLICT DO NOTHING`` in chunks (executemany); returns how
    many rows were new.

    This is the bulk path of enrollment (a million rows for a large segment), so
    on SQLite it skips SQLAlchemy's per-row parameter processing: rows go to the
    driver as tuples, with instants already in the text form ``UTCDateTime``
    stores (each distinct instant formatted once) and JSON as its text.
    """
    if not rows:
        return 0
    connection = _connection(conn)
    written = 0
    if connection.dialect.name == "sqlite":
        columns = list(rows[0])
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
        )
        stamp = memoized(sqlite_instant)  # many rows share instants (created_at, due_at)
        converters = [_sqlite_converter(table.c[name].type, connection, stamp) for name in columns]
        for chunk in chunked(rows):
            params = [
                tuple(
                    value if value is None or convert is None else convert(value)
                    for convert, value in zip(converters, row.values(), strict=True)
                )
                for row in chunk
            ]
            result = connection.exec_driver_sql(sql, params)  # type: ignore[arg-type]
            written += max(result.rowcount, 0)
        return written
    stmt = postgresql.insert(table).on_conflict_do_nothing()
    for chunk in chunked(rows):
        written += max(connection.execute(stmt, list(chunk)).rowcount, 0)  # type: ignore[attr-defined]
    return written


def among(column: Any, ids: Sequence[int], conn: Session | Connection) -> ColumnElement[bool]:
    """``column IN ids`` with the ids as one parameter, whatever their number: a
    JSON array read by ``json_each`` on SQLite, an array on PostgreSQL. (A plain
    ``IN`` renders a parameter per id on every execution.)"""
    values = [int(i) for i in ids]
    if _connection(conn).dialect.name == "sqlite":
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
    return sqlite_instant if _connection(conn).dialect.name == "sqlite" else _same


def _same(value: datetime) -> datetime:
    return value


def sqlite_instant(value: datetime) -> str:
    """The text ``UTCDateTime`` stores on SQLite, fast for values already in UTC."""
    if value.tzinfo is UTC:
        return value.isoformat(" ", "microseconds")[:26]
    return _sqlite_datetime(value)


# A bulk write at least this large on SQLite commits without checkpointing the
# WAL itself (``sopbot.db.defer_wal_checkpoint``): enrolling 100,000 rows at a
# time spent about 15% of its time in the commit's checkpoint.
BULK_ROWS = 10_000


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
    connection = _connection(conn)
    names = ", ".join(columns)
    if connection.dialect.name == "sqlite":
        if len(rows) >= BULK_ROWS:  # its commit leaves the WAL checkpoint to a thread
            defer_wal_checkpoint(connection)
        _sqlite_insert_rows(connection, table.name, names, len(columns), rows)
        return
    types = [_pg_array_type(table.c[name].type, connection) for name in columns]
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    sql = (
        f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    )
    for part in chunked(rows, CHUNK * 4):
        connection.exec_driver_sql(sql, tuple(list(column) for column in zip(*part, strict=True)))


# Rows per statement of a bulk insert on SQLite (a multi-row VALUES), fewer
# where the columns would pass SQLite's limit on parameters.
ROWS_PER_INSERT = 500


def _sqlite_insert_rows(
    connection: Connection, table: str, names: str, width: int, rows: Sequence[tuple[Any, ...]]
) -> None:
    """SQLite's :func:`insert_rows`: ``per`` rows per ``INSERT ... VALUES (...),
    (...), ...``, the rest (fewer than ``per``) by an executemany of one row.

    One statement for many rows keeps its cursors on the table and on each
    index from one row to the next, where an executemany opens them again for
    every row and seeks each from the root: a delivery row (17 columns, 9
    indexes) costs about 40% fewer instructions in SQLite. The rows go in
    the given order, so they get the same ids.

    A column with the same value in every row (the template, the channel, the
    creation time of an enrollment's deliveries) is bound once per statement,
    as one numbered parameter every row refers to: binding a value costs the
    driver more than SQLite's reading it."""
    one = f"({', '.join('?' * width)})"
    head = f"INSERT INTO {table} ({names}) VALUES "
    limit = connection.connection.driver_connection.getlimit(  # type: ignore[union-attr]
        sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
    )
    same = _same_in_every_row(rows, width) if len(rows) >= ROWS_PER_INSERT else {}
    varying = [k for k in range(width) if k not in same]
    per = min(ROWS_PER_INSERT, (limit - len(same)) // max(len(varying), 1))
    whole = len(rows) - len(rows) % per if per > 1 else 0
    if whole:
        values = []
        for r in range(per):
            base = r * len(varying)
            slots = {k: base + j + 1 for j, k in enumerate(varying)}
            slots.update((k, per * len(varying) + i + 1) for i, k in enumerate(same))
            values.append(f"({', '.join(f'?{slots[k]}' for k in range(width))})")
        sql = f"{head}{', '.join(values)} ON CONFLICT DO NOTHING"
        constants = tuple(same.values())
        take = _getter(varying)
        flat = chain.from_iterable
        for start in range(0, whole, per):
            part = rows[start : start + per]
            params = (*flat(map(take, part) if same else part), *constants)
            connection.exec_driver_sql(sql, params)
    if whole < len(rows):
        connection.exec_driver_sql(f"{head}{one} ON CONFLICT DO NOTHING", list(rows[whole:]))  # type: ignore[arg-type]


# Values bound once for all rows when every row has the same one.
_ONCE_TYPES = (int, str, type(None))


def _same_in_every_row(rows: Sequence[tuple[Any, ...]], width: int) -> dict[int, Any]:
    """{position: value} of the columns whose value is the same in every row:
    text and NULL by equality, integers of the same type too (an equal bool or
    float would be bound otherwise); other types are always bound per row."""
    first, middle, last = rows[0], rows[len(rows) // 2], rows[-1]
    candidates = [
        k
        for k in range(width)
        if type(first[k]) in _ONCE_TYPES and first[k] == middle[k] == last[k]
    ]
    if not candidates:
        return {}
    same: dict[int, Any] = {}
    for k in candidates:
        value, column = first[k], list(map(operator.itemgetter(k), rows))
        if column.count(value) != len(column):
            continue
        if type(value) is int and set(map(type, column)) != {int}:
            continue
        same[k] = value
    return same


def execute_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Run one statement for many parameter sets (an executemany).

    On SQLite the statement is compiled once and the driver gets plain tuples:
    SQLAlchemy's per-row parameter processing costs more than the UPDATE itself
    on the dispatch hot path. On PostgreSQL likewise, with each bind's own
    processor applied once per value (:func:`_pg_execute_many`). Elsewhere
    SQLAlchemy's own executemany is used.
    """
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        return _pg_execute_many(conn, stmt, rows)
    if conn.dialect.name != "sqlite":
        return rowcount(conn.execute(stmt, list(rows)))
    compiled = stmt.compile(dialect=conn.dialect)
    names = compiled.positiontup or []
    fixed = compiled.construct_params(rows[0])
    stamp = memoized(sqlite_instant)  # the batch's rows share "now"

    def converter(name: str) -> Callable[[Any], Any] | None:
        return _sqlite_converter(compiled.binds[name].type, None, stamp)

    # Every row gives the same names (the parameter sets of one statement);
    # the statement's own binds (fence values, constants) are the same for all.
    given = [name for name in names if name in rows[0]]
    others = [name for name in names if name not in rows[0]]
    constants = tuple(_converted(fixed[name], converter(name)) for name in others)
    take = _getter(given)
    convert = [(k, c) for k, name in enumerate(given) if (c := converter(name)) is not None]
    # each parameter's position in (the row's values + the constants)
    where = {name: k for k, name in enumerate(given + others)}
    order = _getter([where[name] for name in names]) if others else None
    params: list[tuple[Any, ...]] = []  # the driver's own form (SQLAlchemy wants tuples)
    for row in rows:
        values = take(row)
        if convert:
            converted = list(values)
            for k, c in convert:
                value = converted[k]
                if value is not None:
                    converted[k] = c(value)
            values = tuple(converted)
        if order is not None:
            values = order((*values, *constants))
        params.append(values)
    return rowcount(conn.exec_driver_sql(compiled.string, params))  # type: ignore[arg-type]


def _getter(keys: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """``itemgetter(*keys)``, always giving a sequence."""
    if len(keys) == 1:
        key = keys[0]
        return lambda item: (item[key],)
    if not keys:
        return lambda item: ()
    return operator.itemgetter(*keys)


def _converted(value: Any, convert: Callable[[Any], Any] | None) -> Any:
    return value if value is None or convert is None else convert(value)


def _pg_execute_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> int:
    """The PostgreSQL executemany of :func:`execute_many`: compiled once (bind
    casts included), each value through its bind's own processor, and the
    parameter sets handed to psycopg, which pipelines them and prepares the
    statement. SQLAlchemy's executemany rebuilds every parameter set through
    its compiled-statement machinery, the larger part of the worker's CPU for
    an outcome write of a few hundred rows."""
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    if compiled.escaped_bind_names or any(b.expanding for b in compiled.bind_names):
        return rowcount(conn.execute(stmt, list(rows)))  # names or lists it rewrites
    fixed = compiled.construct_params(rows[0])
    processors: dict[str, Callable[[Any], Any] | None] = {}
    constants: dict[str, Any] = {}
    for bind, name in compiled.bind_names.items():
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in rows[0]:
            processors[name] = convert
            continue
        value = fixed[name]
        constants[name] = value if value is None or convert is None else convert(value)
    params = []
    for row in rows:
        values = dict(constants)
        for name, convert in processors.items():
            value = row[name]
            values[name] = value if value is None or convert is None else convert(value)
        params.append(values)
    return rowcount(conn.exec_driver_sql(compiled.string, params))  # type: ignore[arg-type]


def _pg_array_type(column_type: Any, conn: Connection) -> str:
    if isinstance(column_type, UTCDateTime):
        return "timestamptz"
    return str(column_type.compile(dialect=conn.dialect))


def _sqlite_converter(
    column_type: Any, conn: Connection | None, stamp: Callable[[Any], Any]
) -> Callable[[Any], Any] | None:
    """How a value of ``column_type`` goes to the SQLite driver: instants and
    JSON by the fast paths; with ``conn``, any other type by its own bind
    processor (dates, booleans, ...)."""
    if isinstance(column_type, UTCDateTime):
        return stamp
    if isinstance(column_type, JSON):
        return json_text
    if conn is None:
        return None
    return column_type.bind_processor(conn.dialect)  # type: ignore[no-any-return]


def json_text(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, the same text."""
    if _encode_json is None:
        return json.dumps(value, ensure_ascii=False)
    return "".join(_encode_json(value, 0))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder ``json.dumps`` builds afresh for every call (with its options),
# made once: building it costs more than encoding a message's few parts, and
# every sent delivery's rendered parts are encoded on the dispatch path. No
# markers (a template's parts cannot refer to themselves), so it keeps no state
# between calls.
_encode_json = (
    c_make_encoder(None, _not_json, encode_basestring, None, ": ", ", ", False, False, True)
    if c_make_encoder is not None
    else None
)


def _sqlite_datetime(value: datetime) -> str:
    # The exact text SQLAlchemy's SQLite DATETIME writes, so comparisons in SQL
    # (always against parameters bound through UTCDateTime) order correctly.
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def read_snapshot(engine: Engine) -> Engine:
    """The engine for reads that must see one consistent snapshot across
    several statements (SQLite: a deferred read transaction in WAL mode, which
    also never takes the write lock; PostgreSQL: REPEATABLE READ)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return reader(engine)


def unindexed(column: Any, sqlite: bool) -> Any:
    """On SQLite, ``+column``: the planner will not use an index on it, so the
    read stays driven by the index that gives the wanted order or range (a
    documented SQLite idiom). Elsewhere the column itself."""
    if not sqlite:
        return column
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)
