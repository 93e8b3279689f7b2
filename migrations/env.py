"""Alembic environment for sopbot.

Run through ``sopbot db upgrade`` (``sopbot.migrate`` hands over a connection),
or with the ``alembic`` command from the repository root, which reads the
database URL from ``SOPBOT_DATABASE_URL`` like every sopbot process::

    alembic revision --autogenerate -m "add contacts.locale"
    alembic upgrade head
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from sopbot.db import make_engine
from sopbot.migrate import context_options, target_metadata
from sopbot.settings import Settings

config = context.config

# Any PostgreSQL session upgrading waits here for any other (two `sopbot db
# upgrade` started together run one after the other, the second finds nothing to do).
ADVISORY_LOCK_KEY = 0x50_B0_7D_B0


def _database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata(),
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
