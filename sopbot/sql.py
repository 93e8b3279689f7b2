"""SQL helpers every domain shares: how a read sees one snapshot, and how a
predicate keeps SQLite's planner on the index that gives the wanted order."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression

from sopbot.db import reader


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
