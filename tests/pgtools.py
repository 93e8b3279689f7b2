"""PostgreSQL databases of their own: the suite's, one per run
(``tests/conftest.py``), and those of tests that need a database to themselves
(migrations, multi-process runs). Each is created and dropped through the
server's ``postgres`` maintenance database, and named after this process, so
several runs on one server never touch each other's.

The server is the one SOPBOT_TEST_DATABASE_URL points at, else the machine's
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; tests that need it
skip when it does not answer."""

from __future__ import annotations

import os
from functools import cache

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.scaleout import fresh_postgres

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    url = os.environ.get("SOPBOT_TEST_DATABASE_URL", "")
    return url if url.startswith("postgresql") else DEFAULT_SERVER


@cache
def reachable() -> bool:
    """Whether the server answers, through the ``postgres`` maintenance database
    every helper here works from (the URL's own database need not exist)."""
    try:
        engine = create_engine(
            make_url(server_url()).set(drivername="postgresql+psycopg", database="postgres"),
            connect_args={"connect_timeout": 3},
        )
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means: skip
        return False


def require_postgres() -> None:
    if not reachable():
        pytest.skip(f"PostgreSQL not reachable at {server_url()}")


def fresh_database(name: str) -> str:
    """Drop and create database ``name`` on the test server; return its URL."""
    require_postgres()
    return fresh_postgres(server_url(), name)


def drop_database(name: str) -> None:
    base = make_url(server_url()).set(drivername="postgresql+psycopg")
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


def private_name(prefix: str) -> str:
    """A database name of this test process's own: several runs of the suite
    on one machine (several engineers, CI) must not drop each other's."""
    return f"{prefix}_{os.getpid()}"
