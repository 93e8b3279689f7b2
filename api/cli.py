"""The ``sopbot`` command."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from api.cli_common import echo_json, engine_and_clock, fail, require_current_schema
from api.cli_sops import contact_app, import_app, template_app
from sopbot.settings import Settings

app = typer.Typer(
    help="sopbot: private-domain community-operations SOP scheduler.", no_args_is_help=True
)
app.add_typer(template_app, name="template")
app.add_typer(contact_app, name="contact")
app.add_typer(import_app, name="import")


def _one_scheduler_per_sqlite_file(settings: Settings) -> Any:
    """This process's scheduler lock on a SQLite file (none on PostgreSQL);
    refuses to start when another scheduler holds it."""
    from scheduler.operations.sqlite_lock import SchedulerAlreadyRunning, hold_scheduler_lock

    try:
        return hold_scheduler_lock(settings.database_url)
    except SchedulerAlreadyRunning as exc:
        fail(str(exc))


@app.command()
def serve(
    demo: Annotated[bool, typer.Option(help="load the demo SOPs, contacts and groups")] = False,
    host: Annotated[str | None, typer.Option(help="bind address (SOPBOT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (SOPBOT_PORT)")] = None,
    migrate: Annotated[
        bool, typer.Option(help="run `sopbot db upgrade` first (single-process deployments)")
    ] = False,
) -> None:
    """Run the API, the status page and the scheduler (in a child process that
    lives and dies with this one; SOPBOT_SERVE_SCHEDULER_PROCESS).

    Refuses to start on an outdated schema (run `sopbot db upgrade`, or pass
    --migrate); a brand-new, empty SQLite database is created on the spot."""
    import uvicorn

    from api.app import create_app, warm_up_in_background
    from sopbot.logging import configure_logging, uvicorn_log_config

    settings = Settings()
    # A page's request thread waiting for the interpreter (behind a large event
    # post, or the scheduler when it runs in this process) gets it after 0.5 ms
    # instead of 5 ms, which is most of a page's time then (benchmarks/pages.py).
    sys.setswitchinterval(0.0005)
    configure_logging(settings, process_role="serve", worker_id=settings.worker_id)
    require_current_schema(settings, upgrade_empty=True, migrate=migrate)
    scheduler_lock = _one_scheduler_per_sqlite_file(settings) if settings.run_scheduler else None

    bind_host, bind_port = host or settings.host, port or settings.port

    def startup(app_: Any) -> None:
        if demo:
            from api.demo import load_demo

            created = load_demo(app_.state.engine, app_.state.clock.now(), app_.state.settings)
            if created["templates"]:
                logging.getLogger("sopbot").info("demo loaded: %s", created)
            else:
                logging.getLogger("sopbot").info("demo data already there: nothing added")
        _print_setup_link(app_, bind_host, bind_port)
        warm_up_in_background()

    application = create_app(
        settings, scheduler_process=settings.serve_scheduler_process, on_startup=startup
    )
    typer.echo(
        f"sopbot on http://{bind_host}:{bind_port}/  (API docs: /docs, database: {settings.database_url})"
    )
    log_config = uvicorn_log_config(settings, process_role="serve")
    logging_options: dict[str, Any] = {"log_config": log_config} if log_config else {}
    uvicorn.run(
        application,
        host=bind_host,
        port=bind_port,
        log_level="info",
        **logging_options,
    )
    del scheduler_lock  # held until the server stopped


def _print_setup_link(app_: Any, host: str, port: int) -> None:
    """No users yet: print a one-time link that creates the first admin."""
    from api.users import service as users_service
    from sopbot.db import session_scope

    with session_scope(app_.state.engine) as session:
        token = users_service.issue_setup_token(session, app_.state.clock.now())
    if token:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        typer.secho(
            "\nNo users yet. Create the first admin (this link works once):\n"
            f"  http://{shown}:{port}/setup?token={token}\n"
            "or run: sopbot user create admin --role admin\n",
            fg=typer.colors.YELLOW,
        )


user_app = typer.Typer(help="Users of the operator UI and API.", no_args_is_help=True)
app.add_typer(user_app, name="user")


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[
        list[str] | None, typer.Option(help="admin, operator, approver, analyst (repeatable)")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(help="password (default: asked for; SOPBOT_NEW_PASSWORD also works)"),
    ] = None,
    display_name: Annotated[str, typer.Option(help="name shown in the UI")] = "",
    token: Annotated[
        str | None, typer.Option(help="also create an API token with this name (printed once)")
    ] = None,
) -> None:
    """Create a user (the first admin: `sopbot user create admin --role admin`)."""
    import os

    from api.users import service as users_service
    from sopbot.db import session_scope

    secret = password or os.environ.get("SOPBOT_NEW_PASSWORD")
    if not secret:
        secret = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    engine, clock, _ = engine_and_clock()
    try:
        with session_scope(engine) as session:
            user = users_service.create_user(
                session,
                username,
                secret,
                role or ["admin"],
                clock.now(),
                display_name=display_name,
            )
            out: dict[str, Any] = {"id": user.id, "username": user.username, "roles": user.roles}
            if token:
                new = users_service.create_token(session, user.id, token, clock.now())  # type: ignore[arg-type]
                out["token"] = new.secret
    except users_service.UserError as exc:
        fail(str(exc))
    echo_json(out)


@user_app.command("list")
def user_list() -> None:
    """List users and their roles."""
    from api.users import service as users_service
    from sopbot.db import session_scope

    engine, _, _ = engine_and_clock()
    with session_scope(engine) as session:
        for user in users_service.list_users(session):
            state = "" if user.active else "  (disabled)"
            typer.echo(f"{user.id:>4}  {user.username:<24} {user.roles}{state}")


@app.command()
def worker() -> None:
    """Run only the scheduler and dispatch (scale-out: many workers, one PostgreSQL).

    Refuses to start unless the schema is current (`sopbot db upgrade`)."""
    import asyncio

    from scheduler.operations.worker import run_worker
    from sopbot.logging import configure_logging

    settings = Settings()
    configure_logging(settings, process_role="worker", worker_id=settings.worker_id)
    require_current_schema(settings, upgrade_empty=False)
    scheduler_lock = _one_scheduler_per_sqlite_file(settings)
    asyncio.run(run_worker(settings, freeze_gc=True))
    del scheduler_lock  # held until the worker stopped


@app.command("scheduler-process", hidden=True)
def scheduler_process() -> None:
    """serve's scheduler (started by `sopbot serve`, never by hand): a worker
    under serve's id and lock that ends with serve."""
    import asyncio

    from scheduler.operations.child import child_settings, die_with_parent
    from scheduler.operations.worker import run_worker
    from sopbot.logging import configure_logging

    parent = child_settings()
    if parent is None:
        fail("`sopbot scheduler-process` is started by `sopbot serve`; run `sopbot worker` instead")
        return
    serve_pid, metrics_port = parent
    die_with_parent(serve_pid)
    settings = Settings()
    configure_logging(settings, process_role="serve-scheduler", worker_id=settings.worker_id)
    asyncio.run(
        run_worker(settings, role="serve", dispatch_metrics_port=metrics_port, freeze_gc=True)
    )


@app.command("api")
def api_only(
    host: Annotated[str | None, typer.Option(help="bind address (SOPBOT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (SOPBOT_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run only the API and UI (no scheduler); safe with several workers.

    Refuses to start unless the schema is current (`sopbot db upgrade`)."""
    import os

    import uvicorn

    from sopbot.logging import configure_logging, uvicorn_log_config

    settings = Settings()
    configure_logging(settings, process_role="api")
    require_current_schema(settings, upgrade_empty=False)
    os.environ["SOPBOT_RUN_SCHEDULER"] = "false"
    log_config = uvicorn_log_config(settings)
    logging_options: dict[str, Any] = {"log_config": log_config} if log_config else {}
    uvicorn.run(
        "api.app:create_served_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="info",
        **logging_options,
    )


@app.command()
def demo() -> None:
    """Load the demo SOPs, contacts and groups into the database (idempotent)."""
    from api.demo import load_demo

    engine, clock, settings = engine_and_clock()
    echo_json(load_demo(engine, clock.now(), settings))


@app.command()
def deliveries(
    template: Annotated[str | None, typer.Option(help="template id or name")] = None,
    status: Annotated[str | None, typer.Option(help="delivery status")] = None,
    limit: Annotated[int, typer.Option(help="rows")] = 20,
) -> None:
    """Show the latest deliveries."""
    from sqlmodel import col, select

    from scheduler.outbox.models import Delivery
    from sop_templates import service
    from sopbot.db import session_scope

    engine, _, _ = engine_and_clock()
    with session_scope(engine) as session:
        stmt = select(Delivery).order_by(col(Delivery.due_at).desc()).limit(limit)
        if template:
            try:
                stmt = stmt.where(
                    Delivery.template_id == service.find_template(session, template).id
                )
            except service.NotFound as exc:
                fail(str(exc))
        if status:
            stmt = stmt.where(Delivery.status == status)
        for d in session.exec(stmt).all():
            typer.echo(
                f"{d.id:>6} {d.status:<9} due {d.due_at:%Y-%m-%d %H:%M:%S}Z  "
                f"{d.target_kind} {d.target_id}  tp {d.touchpoint_id}  {d.reason or ''}"
            )


retention_app = typer.Typer(help="Delivery log rollups and retention.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")


@retention_app.command("run")
def retention_run(
    days: Annotated[
        int | None, typer.Option(help="keep this many days (default SOPBOT_RETENTION_DAYS)")
    ] = None,
) -> None:
    """Roll up finished deliveries, then archive (gzip'd NDJSON per day) and
    delete the ones older than the retention period. Statistics keep them."""
    from dataclasses import asdict

    from scheduler.analytics.retention import run_retention

    engine, clock, settings = engine_and_clock()
    echo_json(asdict(run_retention(engine, clock, settings, days=days)))


@retention_app.command("rollup")
def retention_rollup() -> None:
    """Only roll up finished deliveries (keeps statistics fast; run it often)."""
    from dataclasses import asdict

    from scheduler.analytics.retention import roll_up

    engine, clock, settings = engine_and_clock()
    echo_json(asdict(roll_up(engine, clock, settings)))


db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Migrate the database (SOPBOT_DATABASE_URL) to the latest schema. Creates
    the schema on an empty database; adopts one made before migrations when its
    tables match. Safe to run again, and from several machines at once."""
    from sopbot.db import make_engine
    from sopbot.logging import configure_logging
    from sopbot.migrate import SchemaError, describe, upgrade

    settings = Settings()
    configure_logging(settings, process_role="migrate")
    engine = make_engine(settings)
    try:
        state = upgrade(engine, revision)
        typer.echo(describe(state, engine) if state.ok else f"schema at revision {state.current}")
    except SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the code's; exit 1 unless current."""
    from sopbot.db import make_engine
    from sopbot.migrate import SchemaError, describe, schema_state

    engine = make_engine(Settings())
    try:
        state = schema_state(engine)
    except SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    typer.echo(f"database: {state.current or '-'} ({state.status})\ncode head: {state.head}")
    if not state.ok:
        typer.echo(describe(state, engine), err=True)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
