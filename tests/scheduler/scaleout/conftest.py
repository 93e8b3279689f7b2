"""Multi-process proofs: real ``sopbot worker`` processes against a real
PostgreSQL database of their own (``sopbot_scaleout_<pid>``), never the suite's.

Skipped when PostgreSQL does not answer. The harness (seeding, starting and
stopping workers, the witnesses) is ``harness.py`` beside these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import db_upgrade
from pgtools import (
    PrivateServer,
    drop_database,
    fresh_database,
    private_name,
    private_server,
    require_postgres,
)
from sqlalchemy.engine import Engine

from sopbot import migrate
from sopbot.db import make_engine

ROOT = Path(__file__).resolve().parents[3]

DATABASE = private_name("sopbot_scaleout")


@pytest.fixture
def scale_url() -> Iterator[str]:
    """A new, empty database, migrated to head with `sopbot db upgrade`."""
    require_postgres()
    url = fresh_database(DATABASE)
    db_upgrade(url, ROOT)
    yield url
    drop_database(DATABASE)


@pytest.fixture
def scale_engine(scale_url: str) -> Iterator[Engine]:
    engine = make_engine(scale_url)
    assert migrate.schema_state(engine).ok
    yield engine
    engine.dispose()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where worker processes run and write their logs."""
    return tmp_path


@pytest.fixture
def private_pg() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this test's own, to stop and restart at will
    (skipped where the machine has no PostgreSQL binaries)."""
    server = private_server()
    try:
        yield server
    finally:
        server.close()
