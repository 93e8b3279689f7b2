"""The SOP commands: ``sopbot template ...``, ``sopbot contact ...`` and
``sopbot import contacts``. Publishing, enrolling and every audience change go
through the same functions as the API (``scheduler.flows.lifecycle`` and
``scheduler.flows.changes``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from api.cli_common import echo_json, engine_and_clock, fail

template_app = typer.Typer(help="Author, publish and run SOP templates.", no_args_is_help=True)
contact_app = typer.Typer(help="Contacts (friends) and group chats.", no_args_is_help=True)
import_app = typer.Typer(help="Import contacts from CSV files.", no_args_is_help=True)


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fail(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}")
    if not isinstance(data, dict):
        fail(f"{path} must hold one template (a mapping), not {type(data).__name__}")
    return data  # type: ignore[return-value]


@template_app.command("create")
def template_create(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
    publish: Annotated[bool, typer.Option(help="publish it right away")] = False,
) -> None:
    """Create a draft template from a YAML/JSON file (and publish it, exactly as
    the API does: approval where required, the segment enrolled, audited)."""
    from api.template_actions import system_actor
    from scheduler.flows import lifecycle
    from sop_templates import service
    from sopbot.db import session_scope

    spec = _read_spec(file)
    engine, clock, settings = engine_and_clock()
    try:
        with session_scope(engine) as session:
            now = clock.now()
            template = service.create_template(session, spec, now)
            out: dict[str, Any] = {
                "id": template.id,
                "name": template.name,
                "status": template.status,
            }
            if publish:
                actor = system_actor(session, settings, now)
                outcome = lifecycle.publish(session, template.id, now, actor)  # type: ignore[arg-type]
                out.update(
                    status="published",
                    version=outcome.version.version,
                    enrolled=outcome.enrolled,
                    deliveries=outcome.deliveries,
                )
    except service.TemplateError as exc:
        fail(str(exc))
    echo_json(out)


@template_app.command("validate")
def template_validate(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
) -> None:
    """Check a template file without saving it."""
    from sop_templates import service

    try:
        spec = service.parse_spec(_read_spec(file))
    except service.TemplateError as exc:
        fail(str(exc))
    typer.echo(
        f"ok: {spec.name} — "
        + ", ".join(f"{t.name} {t.timing.describe()}" for t in spec.touchpoints)
    )


@template_app.command("publish")
def template_publish(
    template: Annotated[str, typer.Argument(help="id or name")],
    migrate: Annotated[
        str, typer.Option(help="keep: enrolled targets stay on their version; move: to this one")
    ] = "keep",
) -> None:
    """Publish the draft as a new immutable version, exactly as the API does."""
    from api.template_actions import system_actor
    from scheduler.flows import lifecycle
    from sop_templates import service
    from sopbot.db import session_scope

    engine, clock, settings = engine_and_clock()
    try:
        with session_scope(engine) as session:
            now = clock.now()
            found = service.find_template(session, template)
            actor = system_actor(session, settings, now)
            outcome = lifecycle.publish(session, found.id, now, actor, migrate=migrate)  # type: ignore[arg-type]
            out = {
                "id": found.id,
                "name": found.name,
                "version": outcome.version.version,
                "enrolled": outcome.enrolled,
                "deliveries": outcome.deliveries,
            }
    except (service.TemplateError, service.NotFound) as exc:
        fail(str(exc))
    echo_json(out)


@template_app.command("list")
def template_list() -> None:
    """List templates with their delivery counts."""
    from scheduler.outbox import service as scheduler_service
    from sop_templates import service
    from sopbot.db import session_scope

    engine, _, _ = engine_and_clock()
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
    from api.template_actions import system_actor
    from audiences import service as audiences_service
    from scheduler.flows import lifecycle
    from scheduler.outbox import service as scheduler_service
    from sop_templates import service
    from sopbot.db import session_scope

    engine, clock, settings = engine_and_clock()
    try:
        with session_scope(engine) as session:
            now = clock.now()
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
                pairs.append((target.id, anchor or target.joined_at))  # naive: template time
            actor = system_actor(session, settings, now)
            result = lifecycle.enroll(session, found, pairs, now, actor, named=", ".join(targets))
    except (
        service.TemplateError,
        service.NotFound,
        audiences_service.NotFound,
        scheduler_service.EnrollmentError,
        ValueError,
    ) as exc:
        fail(str(exc))
    echo_json(result.__dict__)


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
    """Add or update a contact; its tags start tagged SOPs as any tag does."""
    from pydantic import ValidationError

    from audiences.changes import EventsRejected
    from audiences.schemas import ContactIn
    from scheduler.flows import changes
    from sopbot.db import session_scope

    engine, clock, _ = engine_and_clock()
    try:
        data = ContactIn(
            external_id=external_id, name=name, account=account, joined_at=joined_at, tags=tag or []
        )
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        with session_scope(engine) as session:
            contact, done = changes.upsert_contact(session, data, clock.now())
            out = {
                "id": contact.id,
                "external_id": contact.external_id,
                "name": contact.name,
                "joined_at": contact.joined_at,
                "enrolled": done.reaction.enrolled,
            }
    except EventsRejected as exc:
        fail(exc.detail())
    echo_json(out)


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
    encoding: Annotated[
        str, typer.Option(help="file encoding, e.g. gb18030; auto tells UTF-8 from GBK/GB18030")
    ] = "utf-8",
) -> None:
    """Import contacts (columns: external_id, name, account, joined_at, tags, ...;
    other columns become attributes). All or nothing unless --allow-partial;
    imported tags start tagged-customer SOPs, new-friend SOPs do not start."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from sqlmodel import Session

    from audiences import importer
    from scheduler.flows import changes

    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    engine, clock, settings = engine_and_clock()
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
        report = changes.import_contacts(
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
    echo_json(summary)
    if report.errors and not report.applied:
        raise typer.Exit(1)
