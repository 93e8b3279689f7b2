"""Database engine, sessions and the column types shared by every table."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, DateTime, event
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine, Result
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel, create_engine

from sopbot.settings import Settings

log = logging.getLogger(__name__)

# SQLite's default: a commit that leaves more than this many pages in the WAL
# checkpoints it (copies them into the database file) before it returns.
_WAL_AUTOCHECKPOINT = 1000
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite transaction waits for the write lock
_CHECKPOINT_DEFERRED = "sopbot_checkpoint_deferred"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text in a fixed
    format, so string comparison in SQL orders correctly. Naive input is
    rejected: it is always a bug to guess a zone here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # SQLite: the same text in and out without the generic two steps (the
    # DATETIME processor, then this type's), which cost a ``datetime.replace``
    # per value (slow keyword parsing) and a %-format per bind; the dispatch
    # path reads and writes several instants per delivery.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        generic = super().bind_processor(dialect)
        if dialect.name != "sqlite" or generic is None:
            return generic

        def process(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is UTC:
                return value.isoformat(" ", "microseconds")[:26]
            return generic(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        generic = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or generic is None:
            return generic

        def process(value: Any) -> Any:
            if type(value) is str and len(value) == 26:  # the stored form, naive UTC
                try:
                    return _fromisoformat(value + "+00:00")
                except ValueError:
                    pass
            return generic(value)

        return process


_fromisoformat = datetime.fromisoformat


# JSON that becomes JSONB on PostgreSQL would be nicer for querying; plain JSON
# keeps one schema for both backends.
JSONType = JSON


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE, DELETE or INSERT touched (0 where the driver says nothing)."""
    return cast(CursorResult[Any], result).rowcount or 0


def is_sqlite(engine_or_dialect: Engine | Connection | Dialect) -> bool:
    if isinstance(engine_or_dialect, Dialect):
        return engine_or_dialect.name == "sqlite"
    return engine_or_dialect.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy/us issue BEGIN ourselves (see _sqlite_begin) so that
    # "BEGIN IMMEDIATE" can take the write lock up front when claiming.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # 8 KiB pages (as PostgreSQL's): fewer, fuller B-tree pages for the outbox's
    # many indexes; bulk enrollment writes ~10% faster. Only takes effect on a new,
    # empty database file (before WAL is switched on); ignored otherwise.
    cursor.execute("PRAGMA page_size=8192")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE by default: a deferred transaction that reads and then writes
    # fails at once with "database is locked" when another writer got in
    # between (the busy timeout cannot help it). Read-only paths opt out.
    options = conn.get_execution_options()
    mode = options.get("sqlite_begin", "IMMEDIATE")
    if options.get("sqlite_wait", True):
        conn.exec_driver_sql(f"BEGIN {mode}")
        return
    conn.exec_driver_sql("PRAGMA busy_timeout=0")
    try:
        conn.exec_driver_sql(f"BEGIN {mode}")
    finally:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def unless_busy(engine: Engine) -> Engine:
    """The engine for a write that may be skipped: on SQLite its transaction
    does not queue for the write lock but fails at once if another writer holds
    it (``is_busy`` tells that error). For bookkeeping such as a token's "last
    used" time, which the next request can record as well."""
    return engine.execution_options(sqlite_wait=False)


def is_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked": another writer holds the write lock."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def defer_wal_checkpoint(session: Session | Connection) -> None:
    """SQLite: the commit of this session's transaction does not checkpoint
    the WAL itself; a thread does it right after, on a connection of its own.

    A transaction that writes a million rows leaves about a gigabyte of pages
    in the WAL, and the commit that crosses ``wal_autocheckpoint`` copies them
    all into the database file before it returns: 2-5 s on top of the
    transaction. The commit itself is the same (its pages are in the WAL,
    which readers and a restart after a crash read as before). Until the
    checkpoint has run, the WAL is what ``synchronous=NORMAL`` makes it after
    any commit: safe against the process dying, and synced by that checkpoint.
    Other writers' commits skip the checkpoint while it runs (a passive one
    does not wait for them, nor they for it). A no-op on other databases."""
    connection = session.connection() if isinstance(session, Session) else session
    if connection.dialect.name != "sqlite":
        return
    pooled = connection.connection
    if pooled.info.get(_CHECKPOINT_DEFERRED):
        return
    pooled.driver_connection.execute("PRAGMA wal_autocheckpoint=0")  # type: ignore[union-attr]
    pooled.info[_CHECKPOINT_DEFERRED] = True


def _checkpoint_after_deferral(dbapi_connection: Any, record: Any) -> None:
    """Back in the pool after ``defer_wal_checkpoint`` (committed or not): the
    connection checkpoints on commit again, and a thread checkpoints now."""
    if not record.info.pop(_CHECKPOINT_DEFERRED, False) or dbapi_connection is None:
        return
    try:
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")
        database = dbapi_connection.execute("PRAGMA database_list").fetchone()[2]
    except sqlite3.Error as exc:  # a broken connection: the pool discards it
        log.warning("restoring the WAL checkpoint threshold failed: %s", exc)
        return
    if database:  # not in memory
        _in_background(database)


_CHECKPOINTS: set[threading.Thread] = set()


def _in_background(database: str) -> None:
    thread = threading.Thread(
        target=_checkpoint, args=(database,), name="sqlite-wal-checkpoint", daemon=True
    )
    _CHECKPOINTS.add(thread)
    thread.start()


def wait_for_checkpoints(timeout: float | None = None) -> None:
    """Wait for this process's background WAL checkpoints to finish (a
    benchmark's setup, so its time section does not pay for them)."""
    for thread in list(_CHECKPOINTS):
        thread.join(timeout)


def _checkpoint(database: str) -> None:
    try:
        connection = sqlite3.connect(database, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()
    except sqlite3.Error as exc:  # the next commit past the threshold checkpoints instead
        log.warning("WAL checkpoint after a large commit failed: %s", exc)
    finally:
        _CHECKPOINTS.discard(threading.current_thread())


def _bind_none_directly() -> None:
    """Let the sqlite3 driver bind ``None`` without looking for a way to adapt it.

    The driver binds str, int and float as they are, but looks every other
    parameter up in its adapter registry, and failing that asks the object and
    the protocol for ``__adapt__`` / ``__conform__`` -- two attribute lookups
    that fail, each building an error message -- before binding ``None`` as
    NULL anyway. Bulk writes bind several NULLs per row (a scheduled delivery's
    reason and finish time, a sent one's lease): registering ``None`` makes it
    one dictionary hit and a C call that gives ``None`` back, still bound as
    NULL. Process-wide, like every sqlite3 adapter, and changes no value."""
    sqlite3.register_adapter(type(None), _NONE_STAYS_NONE)


_NONE_STAYS_NONE: Callable[[Any], None] = {}.get  # get(None) -> None, in C


def make_engine(settings: Settings | str) -> Engine:
    """Build the engine for ``settings.database_url`` (or a URL string)."""
    url = settings if isinstance(settings, str) else settings.database_url
    echo = False if isinstance(settings, str) else settings.sql_echo
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        _bind_none_directly()
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "checkin", _checkpoint_after_deferral)
        return engine
    # preserve_rowcount: SQLAlchemy keeps ``CursorResult.rowcount`` only for
    # UPDATE/DELETE unless asked; with psycopg an ``INSERT ... ON CONFLICT DO
    # NOTHING`` otherwise reports -1, and callers count what was new from it
    # (inbox dedupe, cron fan-out). SQLite reports it either way.
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        execution_options={"preserve_rowcount": True},
    )


def create_all(engine: Engine) -> None:
    """Create every table (import the model modules first so they register)."""
    import_models()
    SQLModel.metadata.create_all(engine)


def import_models() -> None:
    import api.users.models  # noqa: F401
    import audiences.models  # noqa: F401
    import channels.models  # noqa: F401
    import scheduler.analytics.models  # noqa: F401
    import scheduler.flows.models  # noqa: F401
    import scheduler.operations.models  # noqa: F401
    import scheduler.outbox.models  # noqa: F401
    import scheduler.outcomes.models  # noqa: F401
    import scheduler.staff.models  # noqa: F401
    import sop_templates.approval_models  # noqa: F401
    import sop_templates.materials  # noqa: F401
    import sop_templates.models  # noqa: F401


@contextmanager
def session_scope(engine: Engine, *, immediate: bool = False) -> Iterator[Session]:
    """A session whose owner commits: commit on success, roll back on error.

    On SQLite every such transaction begins IMMEDIATE (takes the write lock up
    front), which is also what makes a claim atomic between processes there.
    ``immediate`` documents the intent at call sites that depend on it.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def reader(engine: Engine) -> Engine:
    """The engine for read-only work: on SQLite a deferred BEGIN, so reads do not
    queue behind writers (WAL gives them a consistent snapshot)."""
    return engine.execution_options(sqlite_begin="DEFERRED")
