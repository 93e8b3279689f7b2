"""Shared fixtures. Every test gets a real database: a fresh SQLite file, or —
when SOPBOT_TEST_DATABASE_URL points at PostgreSQL — the same suite against a
database of this run's own (``sopbot_test_<pid>`` on that URL's server, created
at the start and dropped at the end), emptied between tests.

Emptying between tests must never wait on a lock: whatever connection a
previous test left open (an engine it did not dispose, a thread still in a
transaction) is terminated first, and the statement runs under a lock timeout,
so a leak fails the next test loudly instead of hanging the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pgtools import drop_database, fresh_database, private_name, reachable
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from scheduler.runtime import SchedulerRuntime
from sopbot.clock import ManualClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.settings import Settings

TEST_DB_URL = os.environ.get("SOPBOT_TEST_DATABASE_URL", "")
# How long emptying the tables may wait for a lock once leftovers are gone.
LOCK_TIMEOUT = "10s"


def _is_pg(url: str) -> bool:
    return url.startswith("postgresql")


class PostgresTestDatabase:
    """This run's PostgreSQL database and the one connection that empties it."""

    def __init__(self, url: str, admin: Engine) -> None:
        self.url = url
        self.admin = admin
        self.tables = [t.name for t in SQLModel.metadata.sorted_tables]
        # One round trip tells which tables hold rows: most tests touch a few.
        self._non_empty = text(
            " UNION ALL ".join(
                f"SELECT '{name}' WHERE EXISTS (SELECT 1 FROM \"{name}\")" for name in self.tables
            )
        )

    def empty(self) -> None:
        """Truncate the tables that hold rows and restart every id sequence
        (tests expect the first row of a table to get id 1)."""
        with self.admin.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            self._end_other_connections(conn)
            filled = list(conn.execute(self._non_empty).scalars())
            if filled:
                names = ", ".join(f'"{name}"' for name in filled)
                conn.execute(text(f"TRUNCATE {names} CASCADE"))
            conn.execute(
                text(
                    "SELECT setval(format('%I.%I', schemaname, sequencename), 1, false) "
                    "FROM pg_sequences WHERE schemaname = current_schema() "
                    "AND last_value IS NOT NULL"
                )
            )

    @staticmethod
    def _end_other_connections(conn: Connection) -> None:
        """Terminate every other connection to this database, and wait for them
        to go (up to 5 s each): a test's engines are disposed when it ends, so
        anything still connected is a leftover that could hold a lock."""
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """scrypt at N=2**4 instead of 2**14 (~60 ms a hash here): logins and new
    users in tests cost microseconds. A stored hash names its own N, so
    verifying is unchanged; the production cost is api.users.service._N."""
    from api.users import service as users_service

    strong = users_service._N
    users_service._N = 2**4
    users_service._dummy_hash.cache_clear()
    yield
    users_service._N = strong
    users_service._dummy_hash.cache_clear()


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[PostgresTestDatabase | None]:
    """On PostgreSQL: ``sopbot_test_<pid>`` with every table, for the whole run."""
    if not _is_pg(TEST_DB_URL):
        yield None
        return
    if not reachable():
        pytest.exit(f"PostgreSQL not reachable at SOPBOT_TEST_DATABASE_URL={TEST_DB_URL}", 3)
    name = private_name("sopbot_test")
    url = fresh_database(name)
    admin = make_engine(url)
    try:
        create_all(admin)
        yield PostgresTestDatabase(url, admin)
    finally:
        admin.dispose()
        drop_database(name)


@pytest.fixture
def db_url(tmp_path: Path, _pg_database: PostgresTestDatabase | None) -> str:
    if _pg_database is not None:
        _pg_database.empty()
        return _pg_database.url
    return f"sqlite:///{tmp_path / 'sopbot-test.db'}"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        materials_dir=str(tmp_path / "materials"),  # never the checkout's
        worker_id="test-worker",
        claim_batch_size=100,
        lease_seconds=60,
        retry_base_seconds=30,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def engine(settings: Settings, _pg_database: PostgresTestDatabase | None) -> Iterator[Engine]:
    engine = make_engine(settings)
    if _pg_database is None:
        create_all(engine)
    with session_scope(engine) as session:
        from channels.registry import ensure_instance

        ensure_instance(session, "mock", "mock")
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2027, 3, 1, 0, 0, tzinfo=UTC))


@pytest.fixture
async def runtime(engine: Engine, clock: ManualClock, settings: Settings) -> SchedulerRuntime:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(599)))
    rt = SchedulerRuntime(engine, clock, settings, http=http)
    yield rt
    await http.aclose()


@pytest.fixture
def auth_headers(engine: Engine, clock: ManualClock) -> dict[str, str]:
    """An admin's API token as request headers: every route checks the caller
    (api.auth). Pass it to TestClient(app, headers=auth_headers)."""
    from auth_helpers import make_auth_headers

    return make_auth_headers(engine, clock.now())
