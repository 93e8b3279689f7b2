"""The database layer's SQLite settings: a large transaction's commit leaves
the WAL checkpoint to a thread (``defer_wal_checkpoint``)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from sopbot import db
from sopbot.db import defer_wal_checkpoint, make_engine, session_scope

ROWS = 2_000  # 8 KiB each: about 2,000 pages, past the 1,000 that trigger a checkpoint


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB)"))
    yield engine
    engine.dispose()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checkpoints handed to a thread, recorded instead of run."""
    databases: list[str] = []
    monkeypatch.setattr(db, "_in_background", databases.append)
    return databases


def _write(engine: Engine, *, defer: bool, commit: bool = True) -> int:
    """Write ROWS pages in one transaction; the connection's threshold before
    the commit."""
    with session_scope(engine) as session:
        if defer:
            defer_wal_checkpoint(session)
        session.execute(text("INSERT INTO blobs (body) VALUES (zeroblob(8000))"), [{}] * ROWS)
        threshold = session.execute(text("PRAGMA wal_autocheckpoint")).scalar_one()
        if not commit:
            session.rollback()
    return int(threshold)


def _database_file(engine: Engine) -> Path:
    return Path(engine.url.database or "")


def _threshold(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def test_a_deferred_commit_leaves_the_checkpoint_to_a_thread(sqlite_engine, started):
    before = _database_file(sqlite_engine).stat().st_size

    assert _write(sqlite_engine, defer=True) == 0

    # committed and visible, but not yet copied into the database file
    assert _database_file(sqlite_engine).stat().st_size == before
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM blobs").scalar_one() == ROWS
    assert started == [str(_database_file(sqlite_engine))]
    assert _threshold(sqlite_engine) == 1000  # the pooled connection checkpoints again

    db._checkpoint(started[0])  # what the thread runs
    assert _database_file(sqlite_engine).stat().st_size > before + ROWS * 8000
    reopened = sqlite3.connect(started[0])
    assert reopened.execute("SELECT count(*) FROM blobs").fetchone() == (ROWS,)
    reopened.close()


def test_without_deferring_the_commit_checkpoints_itself(sqlite_engine, started):
    before = _database_file(sqlite_engine).stat().st_size

    assert _write(sqlite_engine, defer=False) == 1000

    assert _database_file(sqlite_engine).stat().st_size > before + ROWS * 8000
    assert started == []


def test_a_rolled_back_transaction_restores_the_threshold(sqlite_engine, started):
    _write(sqlite_engine, defer=True, commit=False)

    assert _threshold(sqlite_engine) == 1000
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM blobs").scalar_one() == 0


def test_a_bulk_insert_defers_its_commit_s_checkpoint(sqlite_engine, started):
    """``insert_rows`` of a bulk write (enrollment) defers; a small one does not."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from sopbot.sql import BULK_ROWS, insert_rows

    table = Table("blobs", MetaData(), Column("id", Integer, primary_key=True))
    with session_scope(sqlite_engine) as session:
        insert_rows(session, table, ["id"], [(i,) for i in range(1, 11)])
    assert started == []
    with session_scope(sqlite_engine) as session:
        insert_rows(session, table, ["id"], [(i,) for i in range(11, 11 + BULK_ROWS)])
    assert started == [str(_database_file(sqlite_engine))]
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM blobs").scalar_one() == BULK_ROWS + 10


_KILLED_AFTER_COMMIT = """
import os, sys
from sqlalchemy import text
from sopbot import db
db._in_background = lambda database: None  # killed before any checkpoint
engine = db.make_engine(sys.argv[1])
with db.session_scope(engine) as session:
    db.defer_wal_checkpoint(session)
    session.execute(text("INSERT INTO blobs (body) VALUES (zeroblob(8000))"), [{}] * 2000)
os.kill(os.getpid(), 9)
"""


def test_a_process_killed_after_a_deferred_commit_loses_nothing(sqlite_engine):
    sqlite_engine.dispose()
    database = _database_file(sqlite_engine)
    before = database.stat().st_size

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_COMMIT, str(sqlite_engine.url)], check=False
    )

    assert killed.returncode == -9
    assert database.stat().st_size == before  # never checkpointed
    restarted = sqlite3.connect(database)
    assert restarted.execute("SELECT count(*) FROM blobs").fetchone() == (ROWS,)
    restarted.close()


def test_a_bulk_insert_writes_the_rows_as_an_executemany_would(sqlite_engine):
    """Several rows per statement, a value shared by every row bound once: the
    same rows, ids, values and storage types as one INSERT per row."""
    from sqlalchemy import Column, Integer, MetaData, Table, Text

    from sopbot.sql import ROWS_PER_INSERT, insert_rows

    columns = ["id", "a", "b", "c", "d"]
    table = Table(
        "mixed",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("a", Integer),
        Column("b"),  # no affinity: 1 and 1.0 are stored apart
        Column("c", Text),
        Column("d", Text),
    )
    n = ROWS_PER_INSERT * 2 + 7  # full statements and a rest
    odd = ROWS_PER_INSERT + 200  # in a full statement, not a row looked at first
    rows = [(None, k, 1.0 if k == odd else 1, "same", None) for k in range(n)]
    sql = "SELECT id, a, b, typeof(b), c, typeof(c), d FROM {} ORDER BY id"
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE plain (id INTEGER PRIMARY KEY, a INTEGER, b, c TEXT, d TEXT)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE mixed (id INTEGER PRIMARY KEY, a INTEGER, b, c TEXT, d TEXT)"
        )
        conn.exec_driver_sql("INSERT INTO plain (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)", rows)
    with session_scope(sqlite_engine) as session:
        insert_rows(session, table, columns, rows)
    with sqlite_engine.connect() as conn:
        expected = conn.exec_driver_sql(sql.format("plain")).all()
        written = conn.exec_driver_sql(sql.format("mixed")).all()
    assert len(written) == n
    assert written == expected
    assert expected[odd][3] == "real" and expected[0][3] == "integer"


def test_unless_busy_fails_at_once_on_a_held_write_lock_and_waits_again_after(engine) -> None:
    if not db.is_sqlite(engine):
        pytest.skip("SQLite's single write lock")
    writer = engine.raw_connection()
    try:
        writer.execute("BEGIN IMMEDIATE")
        with db.unless_busy(engine).connect() as conn:
            with pytest.raises(OperationalError) as caught:
                conn.begin()
            assert db.is_busy(caught.value)
            conn.rollback()
            # the same connection waits for the write lock again
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
        writer.rollback()
    finally:
        writer.close()
    with db.session_scope(db.unless_busy(engine)) as session:  # free: it writes
        session.execute(text("SELECT 1"))
