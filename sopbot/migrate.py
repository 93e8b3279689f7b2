"""Schema migrations (Alembic, scripts in the top-level ``migrations/``).

Production processes never create tables themselves: ``sopbot db upgrade``
brings the schema to the code's head revision, and ``serve``/``api``/``worker``
refuse to start on a database that is not there, with a message naming that
command. The one shortcut is for developers: ``serve`` (and the other CLI
commands) on a brand-new, empty SQLite file upgrade it on their own, and a
database that ``create_all`` made before migrations existed is adopted (stamped)
when its tables match the models exactly.

Tests keep building fresh databases with ``create_all``; a test checks that the
migrations at head produce exactly the models' schema.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from sopbot.db import import_models, is_sqlite

log = logging.getLogger("sopbot.migrate")

UPGRADE_COMMAND = "sopbot db upgrade"
VERSION_TABLE = "alembic_version"


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


class SchemaError(RuntimeError):
    """The database schema is not the one this code needs; the message says what to run."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against the migrations this code carries.

    ``status``: ``current`` (at head), ``empty`` (no sopbot table, no history),
    ``behind`` (an older known revision), ``unknown`` (a revision this code does
    not have: a newer sopbot migrated it), ``unversioned`` (tables but no
    migration history: made by ``create_all``)."""

    status: str
    current: str | None
    head: str

    @property
    def ok(self) -> bool:
        return self.status == "current"


# -- options shared with migrations/env.py --------------------------------------------


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave alone tables in the database that no sopbot model declares (another
    application's, or a table a newer sopbot added)."""
    return not (type_ == "table" and reflected and compare_to is None)


def context_options(connection: Connection) -> dict[str, Any]:
    """``context.configure`` options for autogenerate, comparison and upgrades."""
    return {
        "target_metadata": target_metadata(),
        "render_as_batch": is_sqlite(connection),  # SQLite cannot ALTER most things
        "compare_type": True,
        "include_object": include_object,
        "version_table": VERSION_TABLE,
    }


def target_metadata() -> Any:
    import_models()
    return SQLModel.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` pointing at ``migrations/``; with ``connection``,
    env.py migrates over it instead of building its own engine."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise SchemaError(f"the migrations have {len(heads)} heads ({heads}); merge them")
    return heads[0]


# -- reading ---------------------------------------------------------------------------


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database (read directly: Alembic's
    MigrationContext would log two lines on every process start to say it)."""
    revisions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    found = list(revisions)
    if len(found) > 1:
        raise SchemaError(f"the database records {len(found)} heads ({found}); merge them")
    return found[0] if found else None


def schema_diff(connection: Connection) -> list[Any]:
    """Differences between the database and the models (Alembic autogenerate's
    view): empty when they match."""
    context = MigrationContext.configure(connection, opts=context_options(connection))
    return list(compare_metadata(context, target_metadata()))


def schema_state(engine: Engine) -> SchemaState:
    head = head_revision()
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        current = current_revision(connection) if VERSION_TABLE in tables else None
    if current is None:
        ours = {t.name for t in target_metadata().sorted_tables}
        return SchemaState("unversioned" if tables & ours else "empty", None, head)
    if current == head:
        return SchemaState("current", current, head)
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    return SchemaState("behind" if current in known else "unknown", current, head)


def describe(state: SchemaState, engine: Engine) -> str:
    where = engine.url.render_as_string(hide_password=True)
    if state.status == "current":
        return f"database schema is current (revision {state.head})"
    if state.status == "empty":
        return (
            f"the database {where} has no sopbot tables yet: run `{UPGRADE_COMMAND}` to create them"
        )
    if state.status == "behind":
        return (
            f"the database {where} is at schema revision {state.current}, this sopbot needs "
            f"{state.head}: back it up, then run `{UPGRADE_COMMAND}`"
        )
    if state.status == "unknown":
        return (
            f"the database {where} is at schema revision {state.current}, which this sopbot "
            "does not know: a newer sopbot migrated it; run that version"
        )
    return (
        f"the database {where} has sopbot tables but no migration history (made before "
        f"migrations): run `{UPGRADE_COMMAND}` to adopt it"
    )


# -- changing ----------------------------------------------------------------------------


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for migrating. On SQLite, foreign keys are off meanwhile:
    batch mode rebuilds tables (copy, drop, rename), and dropping a referenced
    table with them on would fail or cascade."""
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection if is_sqlite(engine) else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # no transaction is open yet
        try:
            yield connection
        finally:
            if raw is not None:
                if connection.in_transaction():
                    connection.rollback()
                raw.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Bring the schema to ``revision`` (``sopbot db upgrade``). An unversioned
    database whose tables match the models is adopted (stamped) instead; one
    that differs is refused with the differences."""
    state = schema_state(engine)
    if state.status == "unknown":
        raise SchemaError(describe(state, engine))
    if state.status == "unversioned":
        with engine.connect() as connection:
            diff = schema_diff(connection)
        if diff:
            shown = "\n  ".join(str(d) for d in diff[:20])
            raise SchemaError(
                "the database has sopbot tables but no migration history, and they differ "
                f"from this sopbot's models, so it cannot be adopted safely:\n  {shown}"
            )
        stamp(engine, state.head)
        log.info("adopted a database made before migrations: stamped %s", state.head)
        return schema_state(engine)
    with _migration_connection(engine) as connection:
        command.upgrade(alembic_config(connection), revision)
        if connection.in_transaction():
            connection.commit()
    return schema_state(engine)


def stamp(engine: Engine, revision: str = "head") -> None:
    with engine.connect() as connection:
        command.stamp(alembic_config(connection), revision)
        if connection.in_transaction():
            connection.commit()


def ensure_current(engine: Engine, *, upgrade_empty: bool = False) -> SchemaState:
    """Start-up check of ``serve``, ``api`` and ``worker``: return when the schema
    is current, raise ``SchemaError`` (naming ``sopbot db upgrade``) when not.

    ``upgrade_empty``: a brand-new, empty SQLite database is upgraded on the
    spot (the developer path of ``sopbot serve``); PostgreSQL never is."""
    state = schema_state(engine)
    if state.ok:
        return state
    if state.status == "empty" and upgrade_empty and is_sqlite(engine):
        log.info("new SQLite database: creating the schema (as `%s` would)", UPGRADE_COMMAND)
        return upgrade(engine)
    if state.status == "unversioned":
        with engine.connect() as connection:
            matches = not schema_diff(connection)
        if matches:  # made by create_all from these very models: record that
            stamp(engine, state.head)
            log.info("adopted a database made before migrations: stamped %s", state.head)
            return schema_state(engine)
    raise SchemaError(describe(state, engine))
