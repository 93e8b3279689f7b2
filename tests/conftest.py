"""Shared fixtures. Every test gets a real database: a fresh SQLite file, or —
when SOPBOT_TEST_DATABASE_URL points at PostgreSQL — the same suite against it,
with the tables emptied between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from scheduler.runtime import SchedulerRuntime
from sopbot.clock import ManualClock
from sopbot.db import create_all, import_models, make_engine, session_scope
from sopbot.settings import Settings

TEST_DB_URL = os.environ.get("SOPBOT_TEST_DATABASE_URL", "")


def _is_pg(url: str) -> bool:
    return url.startswith("postgresql")


@pytest.fixture(scope="session")
def _pg_engine() -> Iterator[Engine | None]:
    if not _is_pg(TEST_DB_URL):
        yield None
        return
    engine = make_engine(TEST_DB_URL)
    import_models()
    SQLModel.metadata.drop_all(engine)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db_url(tmp_path: Path, _pg_engine: Engine | None) -> str:
    if _pg_engine is not None:
        tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
        with _pg_engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return TEST_DB_URL
    return f"sqlite:///{tmp_path / 'sopbot-test.db'}"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        worker_id="test-worker",
        claim_batch_size=100,
        lease_seconds=60,
        retry_base_seconds=30,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def engine(settings: Settings, _pg_engine: Engine | None) -> Iterator[Engine]:
    engine = make_engine(settings)
    if _pg_engine is None:
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
