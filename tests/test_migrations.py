"""Alembic migrations (``migrations/``, ``sopbot.migrate``, ``sopbot db``).

* The migrations at head build exactly the models' schema. A model changed
  without a migration fails here: write one with
  ``alembic revision --autogenerate -m "what changed"`` (see the README).
* A database filled at the first revision keeps every row when upgraded to head.
* serve/api/worker refuse an outdated schema and name ``sopbot db upgrade``.

SQLite always; PostgreSQL too (a database of its own) when the suite runs on
PostgreSQL (SOPBOT_TEST_DATABASE_URL, as CI's second run does).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from pgtools import drop_database, fresh_database, private_name, reachable
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from api import cli
from sopbot import migrate
from sopbot.db import create_all, make_engine

runner = CliRunner()
SEED_ROWS = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request, tmp_path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    if not os.environ.get("SOPBOT_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip("the PostgreSQL migrations run with SOPBOT_TEST_DATABASE_URL (CI does)")
    if not reachable():
        pytest.skip("PostgreSQL not reachable")
    name = private_name("sopbot_migrations_test")
    yield fresh_database(name)
    drop_database(name)


@pytest.fixture
def blank(blank_url) -> Engine:
    engine = make_engine(blank_url)
    yield engine
    engine.dispose()


def _revisions() -> list[str]:
    """Base first."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_one_head_and_a_linear_history():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1, "merge the migration heads"
    assert _revisions()[-1] == migrate.head_revision()


def test_migrations_at_head_match_the_models_exactly(blank):
    migrate.upgrade(blank)
    with blank.connect() as conn:
        diff = migrate.schema_diff(conn)
    assert diff == [], (
        "the models differ from the migrations at head; add a migration:\n"
        '  SOPBOT_DATABASE_URL=sqlite:///./head.db sopbot db upgrade && SOPBOT_DATABASE_URL=sqlite:///./head.db alembic revision --autogenerate -m "..."\n'
        + "\n".join(str(d) for d in diff)
    )
    assert migrate.schema_state(blank).ok


# -- data survives upgrades ---------------------------------------------------------------


def _value(column: Any, i: int, dialect: str) -> Any:
    kind = column.type
    if isinstance(kind, Boolean):
        return i % 2 == 0
    if isinstance(kind, Integer):
        return i + 1
    if isinstance(kind, Float | Numeric):
        return i + 0.5
    if isinstance(kind, DateTime):
        when = datetime(2027, 1, 1, 8, 0, tzinfo=UTC) + timedelta(minutes=i)
        return when if dialect == "postgresql" else when.replace(tzinfo=None)
    if isinstance(kind, Date):
        return date(2027, 1, 1) + timedelta(days=i)
    if isinstance(kind, JSON):
        return {"row": i, "text": "值"}
    if isinstance(kind, LargeBinary):
        return bytes([i])
    if isinstance(kind, String):
        value = f"{column.table.name[:20]}.{column.name[:20]}#{i}"
        return value[-kind.length :] if kind.length else value
    raise AssertionError(f"no seed value for {column.table.name}.{column.name} ({kind!r})")


def _seed_every_table(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Insert SEED_ROWS rows into every table as it is at this revision, with
    foreign keys pointing at the parents' rows; return what was written."""
    metadata = MetaData()
    written: dict[str, list[dict[str, Any]]] = {}
    with engine.begin() as conn:
        metadata.reflect(conn)
        for table in metadata.sorted_tables:
            if table.name == migrate.VERSION_TABLE:
                continue
            rows = []
            for i in range(SEED_ROWS):
                row = {}
                for column in table.columns:
                    fks = list(column.foreign_keys)
                    if fks:
                        parent = fks[0].column
                        row[column.name] = written[parent.table.name][i][parent.name]
                    else:
                        row[column.name] = _value(column, i, engine.dialect.name)
                rows.append(row)
            conn.execute(table.insert(), rows)
            written[table.name] = rows
    return written


def _read_back(engine: Engine, tables: list[str]) -> dict[str, list[dict[str, Any]]]:
    metadata = MetaData()
    with engine.connect() as conn:
        metadata.reflect(conn, only=tables)
        out = {}
        for name in tables:
            table = metadata.tables[name]
            pk = list(table.primary_key.columns) or list(table.columns)
            out[name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(*pk))]
    return out


def _assert_kept(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]):
    for name, rows in before.items():
        assert len(after[name]) == len(rows), f"{name}: rows lost"
        for old, new in zip(rows, after[name], strict=True):
            for key, value in old.items():
                if key in new:  # a later migration may drop a column on purpose
                    assert _same(new[key], value), f"{name}.{key}: {value!r} became {new[key]!r}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a.replace(tzinfo=a.tzinfo or UTC) == b.replace(tzinfo=b.tzinfo or UTC)
    if isinstance(a, float) or isinstance(b, float):
        return float(a) == float(b)
    return a == b


def test_data_written_at_the_first_revision_survives_upgrading_to_head(blank):
    first = _revisions()[0]
    migrate.upgrade(blank, first)
    assert migrate.schema_state(blank).current == first
    seeded = _seed_every_table(blank)
    assert len(seeded) >= 20  # every table got rows, not just a few

    migrate.upgrade(blank)

    assert migrate.schema_state(blank).ok
    _assert_kept(seeded, _read_back(blank, list(seeded)))


# -- a later migration, to exercise the machinery beyond one revision ---------------------

EXTRA_REVISION = '''
"""test only: rebuild deliveries with a new column, add a table"""
import sqlalchemy as sa
from alembic import op

revision = "ffff_test_extra"
down_revision = {head!r}
branch_labels = None
depends_on = None


def upgrade():
    # recreate="always": SQLite copies deliveries into a new table and drops the
    # old one; rows and the rows that reference it must survive.
    with op.batch_alter_table("deliveries", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=True))
    op.create_table("test_extra", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("UPDATE deliveries SET priority = 1")


def downgrade():
    op.drop_table("test_extra")
    with op.batch_alter_table("deliveries", recreate="always") as batch_op:
        batch_op.drop_column("priority")
'''


@pytest.fixture
def extended_migrations(tmp_path, monkeypatch) -> str:
    """The real migrations plus one more revision on top; returns its id."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head_revision()
    (copy / "versions" / "ffff_test_extra.py").write_text(EXTRA_REVISION.format(head=head))
    monkeypatch.setattr(migrate, "migrations_dir", lambda: Path(copy))
    return "ffff_test_extra"


def test_an_older_schema_is_refused_then_upgraded_without_losing_rows(blank, extended_migrations):
    migrate.upgrade(blank, _revisions()[-2])  # the real head: one behind the extended head
    seeded = _seed_every_table(blank)

    state = migrate.schema_state(blank)
    assert (state.status, state.head) == ("behind", extended_migrations)
    with pytest.raises(migrate.SchemaError, match="run `sopbot db upgrade`"):
        migrate.ensure_current(blank, upgrade_empty=True)

    migrate.upgrade(blank)

    assert migrate.schema_state(blank).ok
    _assert_kept(seeded, _read_back(blank, list(seeded)))
    with blank.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM deliveries WHERE priority = 1")).scalar() == 3
        )
        if blank.dialect.name == "sqlite":  # foreign keys are back on for pooled connections
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_a_newer_schema_is_refused(blank):
    migrate.upgrade(blank)
    with blank.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    state = migrate.schema_state(blank)
    assert state.status == "unknown"
    with pytest.raises(migrate.SchemaError, match="newer sopbot"):
        migrate.ensure_current(blank)
    with pytest.raises(migrate.SchemaError, match="newer sopbot"):
        migrate.upgrade(blank)


def test_a_create_all_database_is_adopted_when_it_matches(blank):
    create_all(blank)
    assert migrate.schema_state(blank).status == "unversioned"
    assert migrate.ensure_current(blank).ok  # stamped, nothing else changed


def test_a_create_all_database_that_differs_is_not_adopted(blank):
    create_all(blank)
    with blank.begin() as conn:
        conn.execute(text("DROP INDEX ix_deliveries_due_at"))
    with pytest.raises(migrate.SchemaError, match="run `sopbot db upgrade`"):
        migrate.ensure_current(blank)
    with pytest.raises(migrate.SchemaError, match="cannot be adopted safely"):
        migrate.upgrade(blank)


# -- the CLI --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _keep_root_logging():
    """The CLI configures the root logger for its process; give it back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.fixture
def no_servers(monkeypatch):
    """serve/api/worker get as far as starting, which is recorded instead."""
    started: list[str] = []
    import uvicorn

    import scheduler.operations.worker

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append("uvicorn"))

    async def fake_worker(settings, stop=None):
        started.append("worker")

    monkeypatch.setattr(scheduler.operations.worker, "run_worker", fake_worker)
    return started


def test_db_upgrade_and_current(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    behind = runner.invoke(cli.app, ["db", "current"])
    assert behind.exit_code == 1 and "(empty)" in behind.output
    assert "run `sopbot db upgrade`" in behind.output

    upgraded = runner.invoke(cli.app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "database schema is current" in upgraded.output

    current = runner.invoke(cli.app, ["db", "current"])
    assert current.exit_code == 0
    assert f"database: {migrate.head_revision()} (current)" in current.output
    assert runner.invoke(cli.app, ["db", "upgrade"]).exit_code == 0  # again: nothing to do


@pytest.mark.parametrize("command", [["worker"], ["api"]])
def test_worker_and_api_refuse_an_empty_database(tmp_path, monkeypatch, no_servers, command):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    result = runner.invoke(cli.app, command)
    assert result.exit_code == 2
    assert "run `sopbot db upgrade`" in result.output
    assert no_servers == []


def test_serve_creates_a_brand_new_sqlite_database(tmp_path, monkeypatch, no_servers):
    path = tmp_path / "fresh.db"
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{path}")
    result = runner.invoke(cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    assert no_servers == ["uvicorn"]
    assert migrate.schema_state(make_engine(f"sqlite:///{path}")).ok


def test_serve_refuses_an_outdated_database_unless_told_to_migrate(
    tmp_path, monkeypatch, no_servers, extended_migrations
):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, _revisions()[-2])  # one behind the extended head
    monkeypatch.setenv("SOPBOT_DATABASE_URL", url)

    refused = runner.invoke(cli.app, ["serve"])
    assert refused.exit_code == 2 and "run `sopbot db upgrade`" in refused.output
    worker = runner.invoke(cli.app, ["worker"])
    assert worker.exit_code == 2 and "run `sopbot db upgrade`" in worker.output
    data = runner.invoke(cli.app, ["template", "list"])  # create_all must not paper over it
    assert data.exit_code == 2 and "run `sopbot db upgrade`" in data.output
    assert no_servers == []

    migrated = runner.invoke(cli.app, ["serve", "--migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert no_servers == ["uvicorn"]
    assert migrate.schema_state(engine).ok
    assert "priority" in {c["name"] for c in inspect(engine).get_columns("deliveries")}
    engine.dispose()
