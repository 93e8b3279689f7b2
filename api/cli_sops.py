"""The SOP commands: ``sopbot template ...``, ``sopbot contact ...`` and
``sopbot import contacts``. Publishing, enrolling and every audience change go
through the same functions as the API (``scheduler.flows.lifecycle`` and
``scheduler.flows.changes``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from api.cli_common import echo_json, engine_and_clock, fail
from audiences.import_options import OPTION_HELP

# A progress bar for files big enough to take a while (about 1,000 rows).
_PROGRESS_BYTES = 100_000

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


@contextmanager
def _on_template(key: str) -> Iterator[tuple[Any, Any, datetime, Any]]:
    """A session (committed when the block ends well), the template ``key``
    names (id or name), now, and the settings."""
    from sop_templates import service
    from sopbot.db import session_scope

    engine, clock, settings = engine_and_clock()
    with session_scope(engine) as session:
        yield session, service.find_template(session, key), clock.now(), settings


def _publish(
    session: Any, settings: Any, template: Any, now: datetime, migrate: str = "keep"
) -> dict[str, Any]:
    """Publish through the one lifecycle (approval, enrollment, audit as ``cli``);
    what ``template create --publish`` and ``template publish`` print."""
    from api.template_actions import system_actor
    from scheduler.flows import lifecycle

    actor = system_actor(session, settings, now)
    outcome = lifecycle.publish(session, template.id, now, actor, migrate=migrate)
    return {
        "id": template.id,
        "name": template.name,
        "status": "published",
        "version": outcome.version.version,
        "enrolled": outcome.enrolled,
        "deliveries": outcome.deliveries,
        "planned_later": outcome.planned_later,
    }


@template_app.command("create")
def template_create(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
    publish: Annotated[bool, typer.Option(help="publish it right away")] = False,
) -> None:
    """Create a draft template from a YAML/JSON file (and publish it, exactly as
    the API does: approval where required, the segment enrolled, audited)."""
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
                out = _publish(session, settings, template, now)
    except service.TemplateError as exc:
        fail(str(exc))
    echo_json(out)


@template_app.command("validate")
def template_validate(
    file: Annotated[Path, typer.Argument(help="template spec, YAML or JSON")],
) -> None:
    """Check a template file without saving it, as saving and publishing do
    (the sample, a few real members of its segment, the channel's limits)."""
    from sop_templates import service
    from sopbot.db import session_scope

    data = _read_spec(file)
    engine, _, _ = engine_and_clock()
    try:
        with session_scope(engine) as session:
            spec = service.check_spec(session, data)
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
    from sop_templates import service

    try:
        with _on_template(template) as (session, found, now, settings):
            out = _publish(session, settings, found, now, migrate)
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

    try:
        with _on_template(template) as (session, found, now, settings):
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
    dry_run: Annotated[bool, typer.Option(help=OPTION_HELP["dry_run"])] = False,
    allow_partial: Annotated[bool, typer.Option(help=OPTION_HELP["allow_partial"])] = False,
    create_accounts: Annotated[bool, typer.Option(help=OPTION_HELP["create_accounts"])] = False,
    timezone: Annotated[str | None, typer.Option(help=OPTION_HELP["timezone"])] = None,
    encoding: Annotated[str, typer.Option(help=OPTION_HELP["encoding"])] = "utf-8",
) -> None:
    """Import contacts (columns: external_id, name, account, joined_at, tags, ...;
    other columns become attributes). All or nothing unless --allow-partial;
    imported tags start tagged-customer SOPs, new-friend SOPs do not start."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from sqlmodel import Session

    from audiences.import_options import ImportOptions
    from scheduler.flows import changes

    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    engine, clock, settings = engine_and_clock()
    options = ImportOptions(
        timezone=timezone or settings.default_timezone,
        encoding=encoding,
        dry_run=dry_run,
        allow_partial=allow_partial,
        create_accounts=create_accounts,
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
            disable=len(data) < _PROGRESS_BYTES or not sys.stderr.isatty(),
        ) as progress,
        Session(engine, expire_on_commit=False) as session,
    ):
        task = progress.add_task("importing contacts", total=None)
        report = changes.import_file(
            session,
            data,
            clock.now(),
            options,
            progress=lambda n, total: progress.update(task, total=total, advance=n),
        )
        if report.applied:
            session.commit()
        else:
            session.rollback()
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
