"""One scheduler per SQLite file.

SQLite serialises every write of every process on one file: a second scheduler
(`sopbot worker` or `sopbot serve`) adds no throughput, only lock waits that
stall dispatch and make API writes time out. So a scheduler process on SQLite
holds an exclusive lock on ``<database>.scheduler.lock`` for its lifetime, and a
second one is refused with a message naming PostgreSQL, the database for many
workers. The lock is the operating system's (``flock``): it goes with the
process, even after ``kill -9``, so a stale file never blocks a restart.

PostgreSQL (and in-memory SQLite, private to its process) take no lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url


class SchedulerAlreadyRunning(RuntimeError):
    """Another scheduler process holds this SQLite file."""


def lock_path(database_url: str) -> Path | None:
    """Where a scheduler on ``database_url`` takes its lock; None when it needs none."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".scheduler.lock")


def hold_scheduler_lock(database_url: str) -> IO[str] | None:
    """Take this process's scheduler lock on a SQLite file, or raise
    :class:`SchedulerAlreadyRunning`. Keep the returned file open for as long as
    the scheduler runs (closing it, or exiting, releases the lock)."""
    path = lock_path(database_url)
    if path is None:
        return None
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SchedulerAlreadyRunning(
            f"another sopbot scheduler (pid {holder}) already runs on the SQLite file "
            f"{make_url(database_url).database}: SQLite takes one scheduler process "
            "(`sopbot serve` or one `sopbot worker`). Stop the other one, or move to "
            "PostgreSQL (SOPBOT_DATABASE_URL=postgresql+psycopg://...) to run several workers."
        ) from None
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    return handle
