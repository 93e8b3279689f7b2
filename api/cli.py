"""The ``sopbot`` command."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from sopbot.settings import Settings

app = typer.Typer(
    help="sopbot: private-domain community-operations SOP scheduler.", no_args_is_help=True
)
template_app = typer.Typer(help="Author, publish and run SOP templates.", no_args_is_help=True)
contact_app = typer.Typer(help="Contacts (friends) and group chats.", no_args_is_help=True)
app.add_typer(template_app, name="template")
app.add_typer(contact_app, name="contact")
import_app = typer.Typer(help="Import contacts from CSV files.", no_args_is_help=True)
app.add_typer(import_app, name="import")


def _engine_and_clock() -> tuple[Any, Any, Settings]:
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
    _refuse_outdated_schema(engine)
    create_all(engine)
    return engine, SystemClock(), settings


def _refuse_outdated_schema(engine: Any) -> None:
    """Commands that work on data may build a fresh database with create_all
    (the developer path), but never on top of an older or newer schema."""
    from sopbot.migrate import SchemaError, describe, schema_state

    try:
        state = schema_state(engine)
    except SchemaError as exc:
        _fail(str(exc))
    if state.status in ("behind", "unknown"):
        _fail(describe(state, engine))


def _require_current_schema(
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
        _fail(str(exc))
    finally:
        engine.dispose()


def _one_scheduler_per_sqlite_file(settings: Settings) -> Any:
    """This process's scheduler lock on a SQLite file (none on PostgreSQL);
    refuses to start when another scheduler holds it."""
    from scheduler.operations.sqlite_lock import SchedulerAlreadyRunning, hold_scheduler_lock

    try:
        return hold_scheduler_lock(settings.database_url)
    except SchedulerAlreadyRunning as exc:
        _fail(str(exc))


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option(help="load the demo SOPs, contacts and groups")] = False,
    host: Annotated[str | None, typer.Option(help="bind address (SOPBOT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (SOPBOT_PORT)")] = None,
    migrate: Annotated[
        bool, typer.Option(help="run `sopbot db upgrade` first (single-process deployments)")
    ] = False,
) -> None:
    """Run the API, the status page and the scheduler in one process.

    Refuses to start on an outdated schema (run `sopbot db upgrade`, or pass
    --migrate); a brand-new, empty SQLite database is created on the spot."""
    import uvicorn

    from api.app import create_app
    from sopbot.logging import configure_logging, uvicorn_log_config

    settings = Settings()
    configure_logging(settings, process_role="serve", worker_id=settings.worker_id)
    _require_current_schema(settings, upgrade_empty=True, migrate=migrate)
    scheduler_lock = _one_scheduler_per_sqlite_file(settings) if settings.run_scheduler else None

    bind_host, bind_port = host or settings.host, port or settings.port

    def startup(app_: Any) -> None:
        if demo:
            from api.demo import load_demo

            created = load_demo(app_.state.engine, app_.state.clock.now())
            if created["templates"]:
                logging.getLogger("sopbot").info("demo loaded: %s", created)
            else:
                logging.getLogger("sopbot").info("demo data already there: nothing added")
        _print_setup_link(app_, bind_host, bind_port)

    application = create_app(settings, on_startup=startup)
    typer.echo(
        f"sopbot on http://{bind_host}:{bind_port}/  (API docs: /docs, database: {settings.database_url})"
    )
    log_config = uvicorn_log_config(settings)
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
    engine, clock, _ = _engine_and_clock()
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
        _fail(str(exc))
    _echo_json(out)


@user_app.command("list")
def user_list() -> None:
    """List users and their roles."""
    from api.users import service as users_service
    from sopbot.db import session_scope

    engine, _, _ = _engine_and_clock()
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
    _require_current_schema(settings, upgrade_empty=False)
    scheduler_lock = _one_scheduler_per_sqlite_file(settings)
    asyncio.run(run_worker(settings))
    del scheduler_lock  # held until the worker stopped


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
    _require_current_schema(settings, upgrade_empty=False)
    os.environ["SOPBOT_RUN_SCHEDULER"] = "false"
    log_config = uvicorn_log_config(settings)
    logging_options: dict[str, Any] = {"log_config": log_config} if log_config else {}
    uvicorn.run(
        "api.app:create_app",
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

    engine, clock, _ = _engine_and_clock()
    _echo_json(load_demo(engine, clock.now()))


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        _fail(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}")
    if not isinstance(data, dict):
        _fail(f"{path} must hold one template (a mapping), not {type(data).__name__}")
    return data  # type: ignore[return-value]


@template_app.command("create")
def template_create(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
    publish: Annotated[bool, typer.Option(help="publish it right away")] = False,
) -> None:
    """Create a draft template from a YAML/JSON file."""
    from sop_templates import service
    from sopbot.db import session_scope

    spec = _read_spec(file)
    engine, clock, _ = _engine_and_clock()
    try:
        with session_scope(engine) as session:
            template = service.create_template(session, spec, clock.now())
            out: dict[str, Any] = {
                "id": template.id,
                "name": template.name,
                "status": template.status,
            }
            if publish:
                version = service.publish(session, template.id, clock.now())  # type: ignore[arg-type]
                out.update(status="published", version=version.version)
    except service.TemplateError as exc:
        _fail(str(exc))
    _echo_json(out)


@template_app.command("validate")
def template_validate(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
) -> None:
    """Check a template file without saving it."""
    from sop_templates import service

    try:
        spec = service.parse_spec(_read_spec(file))
    except service.TemplateError as exc:
        _fail(str(exc))
    typer.echo(
        f"ok: {spec.name} — "
        + ", ".join(f"{t.name} {t.timing.describe()}" for t in spec.touchpoints)
    )


@template_app.command("publish")
def template_publish(template: Annotated[str, typer.Argument(help="id or name")]) -> None:
    """Publish the draft as a new immutable version."""
    from sop_templates import service
    from sopbot.db import session_scope

    engine, clock, _ = _engine_and_clock()
    try:
        with session_scope(engine) as session:
            found = service.find_template(session, template)
            version = service.publish(session, found.id, clock.now())  # type: ignore[arg-type]
            out = {"id": found.id, "name": found.name, "version": version.version}
    except (service.TemplateError, service.NotFound) as exc:
        _fail(str(exc))
    _echo_json(out)


@template_app.command("list")
def template_list() -> None:
    """List templates with their delivery counts."""
    from scheduler.outbox import service as scheduler_service
    from sop_templates import service
    from sopbot.db import session_scope

    engine, _, _ = _engine_and_clock()
    with session_scope(engine) as session:
        for t in service.list_templates(session):
            counts = scheduler_service.delivery_counts(session, t.id)
            summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
            typer.echo(f"{t.id:>4}  {t.status:<10} {t.target_kind:<8} {t.name}  [{summary}]")


@template_app.command("enroll")
def template_enroll(
    template: Annotated[str, typer.Argument(help="template id or name")],
    targets: Annotated[list[str], typer.Argument(help="contact/group ids or external ids")],
    anchor: Annotated[
        datetime | None, typer.Option(help="anchor time (default: join time)")
    ] = None,
) -> None:
    """Enroll contacts or groups into a published template."""
    from audiences import service as audiences_service
    from scheduler.outbox import service as scheduler_service
    from sop_templates import service
    from sopbot.clock import ensure_utc
    from sopbot.db import session_scope

    engine, clock, _ = _engine_and_clock()
    try:
        with session_scope(engine) as session:
            found = service.find_template(session, template)
            finder = (
                audiences_service.find_contact
                if found.target_kind == "contact"
                else audiences_service.find_group
            )
            pairs: list[tuple[int, datetime]] = []
            for key in targets:
                target = finder(session, key)
                assert target.id is not None  # a stored row
                pairs.append((target.id, ensure_utc(anchor) if anchor else target.joined_at))
            result = scheduler_service.enroll(session, found, pairs, clock.now())
    except (service.TemplateError, service.NotFound, audiences_service.NotFound, ValueError) as exc:
        _fail(str(exc))
    _echo_json(result.__dict__)


@contact_app.command("add")
def contact_add(
    external_id: Annotated[str, typer.Argument(help="the platform's id, e.g. wm...")],
    name: Annotated[str, typer.Option(help="display name")] = "",
    account: Annotated[str | None, typer.Option(help="owning staff account external id")] = None,
    joined_at: Annotated[
        datetime | None, typer.Option(help="friend-added time (ISO, with offset)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="tag to apply (repeatable)")] = None,
) -> None:
    """Add or update a contact."""
    from pydantic import ValidationError

    from audiences import service as audiences_service
    from audiences.schemas import ContactIn
    from sopbot.db import session_scope

    engine, clock, _ = _engine_and_clock()
    try:
        data = ContactIn(
            external_id=external_id, name=name, account=account, joined_at=joined_at, tags=tag or []
        )
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    with session_scope(engine) as session:
        contact = audiences_service.upsert_contact(session, data, clock.now())
        out = {
            "id": contact.id,
            "external_id": contact.external_id,
            "name": contact.name,
            "joined_at": contact.joined_at,
        }
    _echo_json(out)


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

    engine, _, _ = _engine_and_clock()
    with session_scope(engine) as session:
        stmt = select(Delivery).order_by(col(Delivery.due_at).desc()).limit(limit)
        if template:
            try:
                stmt = stmt.where(
                    Delivery.template_id == service.find_template(session, template).id
                )
            except service.NotFound as exc:
                _fail(str(exc))
        if status:
            stmt = stmt.where(Delivery.status == status)
        for d in session.exec(stmt).all():
            typer.echo(
                f"{d.id:>6} {d.status:<9} due {d.due_at:%Y-%m-%d %H:%M:%S}Z  "
                f"{d.target_kind} {d.target_id}  tp {d.touchpoint_id}  {d.reason or ''}"
            )


@import_app.command("contacts")
def import_contacts(
    file: Annotated[Path, typer.Argument(help="CSV file, UTF-8 with or without BOM")],
    dry_run: Annotated[bool, typer.Option(help="check and count, write nothing")] = False,
    allow_partial: Annotated[
        bool, typer.Option(help="import the good rows even if some rows are bad")
    ] = False,
    create_accounts: Annotated[
        bool, typer.Option(help="register accounts the file names that sopbot does not know")
    ] = False,
    timezone: Annotated[
        str | None, typer.Option(help="zone of times without an offset (default: settings)")
    ] = None,
    encoding: Annotated[str, typer.Option(help="file encoding, e.g. gb18030")] = "utf-8",
) -> None:
    """Import contacts (columns: external_id, name, account, joined_at, tags, ...;
    other columns become attributes). All or nothing unless --allow-partial;
    imported tags start tagged-customer SOPs, new-friend SOPs do not start."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from sqlmodel import Session

    from audiences import importer
    from scheduler.flows import membership

    try:
        data = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    engine, clock, settings = _engine_and_clock()
    parsed = importer.parse_csv(
        data, timezone=timezone or settings.default_timezone, encoding=encoding
    )
    console = Console(stderr=True)
    with (
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=len(parsed.rows) < 1000 or not sys.stderr.isatty(),
        ) as progress,
        Session(engine, expire_on_commit=False) as session,
    ):
        task = progress.add_task("importing contacts", total=len(parsed.rows))
        report = membership.import_contacts(
            session,
            parsed,
            clock.now(),
            allow_partial=allow_partial,
            create_accounts=create_accounts,
            progress=lambda n: progress.advance(task, n),
        )
        if report.applied and not dry_run:
            session.commit()
        else:
            session.rollback()
            report.applied = False
    report.dry_run = dry_run
    for error in report.errors[:50]:
        typer.secho(f"line {error.line}: {error.field}: {error.reason}", fg="red", err=True)
    if len(report.errors) > 50:
        typer.secho(f"... and {len(report.errors) - 50} more", fg="red", err=True)
    summary = report.as_dict()
    summary.pop("errors")
    summary["error_count"] = len(report.errors)
    _echo_json(summary)
    if report.errors and not report.applied:
        raise typer.Exit(1)


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

    engine, clock, settings = _engine_and_clock()
    _echo_json(asdict(run_retention(engine, clock, settings, days=days)))


@retention_app.command("rollup")
def retention_rollup() -> None:
    """Only roll up finished deliveries (keeps statistics fast; run it often)."""
    from dataclasses import asdict

    from scheduler.analytics.retention import roll_up

    engine, clock, settings = _engine_and_clock()
    _echo_json(asdict(roll_up(engine, clock, settings)))


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
        _fail(str(exc))
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
        _fail(str(exc))
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
