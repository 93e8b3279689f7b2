"""What every ``sopbot`` command shares: the database (refusing an outdated
schema), the clock and settings, and how results and errors are printed."""

from __future__ import annotations

import json
from typing import Any

import typer

from sopbot.settings import Settings


def engine_and_clock() -> tuple[Any, Any, Settings]:
    import click

    from sopbot.clock import SystemClock
    from sopbot.db import create_all, make_engine

    settings = Settings()
    engine = make_engine(settings)
    command = click.get_current_context(silent=True)
    if command is not None:
        # Close the pool when the command ends: a process that runs several
        # commands (tests, scripts) must not keep their connections open.
        command.call_on_close(engine.dispose)
    refuse_outdated_schema(engine)
    create_all(engine)
    return engine, SystemClock(), settings


def refuse_outdated_schema(engine: Any) -> None:
    """Commands that work on data may build a fresh database with create_all
    (the developer path), but never on top of an older or newer schema."""
    from sopbot.migrate import SchemaError, describe, schema_state

    try:
        state = schema_state(engine)
    except SchemaError as exc:
        fail(str(exc))
    if state.status in ("behind", "unknown"):
        fail(describe(state, engine))


def require_current_schema(
    settings: Settings, *, upgrade_empty: bool, migrate: bool = False
) -> None:
    """Start-up gate of serve/api/worker: the schema must be at the code's head."""
    from sopbot.db import make_engine
    from sopbot.migrate import SchemaError, ensure_current, upgrade

    engine = make_engine(settings)
    try:
        if migrate:
            upgrade(engine)
        else:
            ensure_current(engine, upgrade_empty=upgrade_empty)
    except SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
