"""Authoring and publishing SOP templates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from sop_templates.checks import publish_problems
from sop_templates.mode_rules import mode_problems
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.rendering import validate_content
from sop_templates.schemas import PART_KINDS, TemplateSpec
from sopbot.ids import is_id


class TemplateError(ValueError):
    """A template request that cannot be carried out; the message says why."""


class NotFound(LookupError):
    pass


class TemplateValidationError(TemplateError):
    """The spec is invalid; ``problems`` lists ``(location, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        summary = "; ".join(f"{loc}: {msg}" for loc, msg in self.problems)
        super().__init__(f"invalid SOP template: {summary}")


def parse_spec(data: dict[str, Any] | TemplateSpec) -> TemplateSpec:
    """Validate a template spec fully: shape, timings, zone, cron and Jinja content."""
    if isinstance(data, TemplateSpec):
        spec = data
    else:
        try:
            spec = TemplateSpec.model_validate(data)
        except ValidationError as exc:
            raise TemplateValidationError(
                [(_loc(err["loc"]), _msg(err)) for err in exc.errors()]
            ) from None
    problems = mode_problems(spec) or validate_content(spec)
    if problems:
        raise TemplateValidationError(problems)
    return spec


def check_spec(session: Session, data: dict[str, Any] | TemplateSpec) -> TemplateSpec:
    """:func:`parse_spec`, then the checks that need the database: the content
    rendered for a few real members of the segment (within the render budget)
    and the bound channel's own limits. Validate, draft save and publish all
    run this, so a draft that saves is a draft that publishes."""
    spec = parse_spec(data)
    problems = publish_problems(session, spec)
    if problems:
        raise TemplateValidationError(problems)
    return spec


_TAGS = {"offset", "day_at", "at", "cron", *PART_KINDS}


def _loc(loc: Sequence[int | str]) -> str:
    """pydantic's error location as operators read it: ``touchpoints[1].timing.cron``."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        # pydantic inserts the discriminator tag of a union after the field name
        tagged_union = previous == "timing" or (isinstance(previous, int) and "content" in out)
        if isinstance(part, str) and part in _TAGS and tagged_union:
            previous = part
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "template"


def _msg(err: Any) -> str:
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def create_template(
    session: Session, data: dict[str, Any] | TemplateSpec, now: datetime
) -> SopTemplate:
    """Create a draft template from a spec (validated, see :func:`check_spec`)."""
    spec = check_spec(session, data)
    if session.exec(select(SopTemplate).where(SopTemplate.name == spec.name)).first():
        raise TemplateError(f"a template named {spec.name!r} already exists")
    template = SopTemplate(
        name=spec.name,
        target_kind=spec.target,
        status=TemplateStatus.DRAFT,
        draft=spec.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
    )
    session.add(template)
    session.flush()
    return template


def update_draft(
    session: Session, template_id: int, data: dict[str, Any] | TemplateSpec, now: datetime
) -> SopTemplate:
    """Replace the editable draft. A published template keeps running its version
    until the draft is published again as a new version."""
    template = get_template(session, template_id)
    if template.status == TemplateStatus.ARCHIVED:
        raise TemplateError(f"template {template.name!r} is archived; create a new one")
    spec = check_spec(session, data)
    if spec.target != template.target_kind and template.current_version_id is not None:
        raise TemplateError("a published template cannot change its target kind")
    clash = session.exec(
        select(SopTemplate).where(SopTemplate.name == spec.name, SopTemplate.id != template.id)
    ).first()
    if clash:
        raise TemplateError(f"a template named {spec.name!r} already exists")
    template.name = spec.name
    template.target_kind = spec.target
    template.draft = spec.model_dump(mode="json")
    template.updated_at = now
    session.add(template)
    session.flush()
    return template


def get_template(session: Session, template_id: int) -> SopTemplate:
    template = session.get(SopTemplate, template_id)
    if template is None:
        raise NotFound(f"no SOP template with id {template_id}")
    return template


def find_template(session: Session, id_or_name: str | int) -> SopTemplate:
    if is_id(id_or_name):
        return get_template(session, int(id_or_name))
    template = session.exec(select(SopTemplate).where(SopTemplate.name == id_or_name)).first()
    if template is None:
        raise NotFound(f"no SOP template named {id_or_name!r}")
    return template


def list_templates(session: Session) -> list[SopTemplate]:
    return list(session.exec(select(SopTemplate).order_by(col(SopTemplate.id))).all())


def freeze_draft(session: Session, template_id: int, now: datetime) -> TemplateVersion:
    """Freeze the draft into a new immutable version and make it the live one.

    One step of publishing, which is ``scheduler.flows.lifecycle.publish``
    (approval, segment enrollment, keep/move, audit): call that."""
    template = get_template(session, template_id)
    if template.status == TemplateStatus.ARCHIVED:
        raise TemplateError(f"template {template.name!r} is archived and cannot be published")
    spec = check_spec(session, template.draft)
    last = session.exec(
        select(TemplateVersion)
        .where(TemplateVersion.template_id == template.id)
        .order_by(col(TemplateVersion.version).desc())
    ).first()
    version = TemplateVersion(
        template_id=template.id,  # type: ignore[arg-type]
        version=(last.version + 1) if last else 1,
        spec=spec.model_dump(mode="json"),
        published_at=now,
    )
    session.add(version)
    session.flush()
    for position, tp in enumerate(spec.touchpoints):
        session.add(
            Touchpoint(
                version_id=version.id,  # type: ignore[arg-type]
                template_id=template.id,  # type: ignore[arg-type]
                position=position,
                name=tp.name,
                timing_kind=tp.timing.kind,
                timing=tp.timing.model_dump(mode="json"),
                content=[p.model_dump(mode="json") for p in tp.content],
                mode=tp.mode,
                grace_seconds=tp.grace_seconds,
                past_policy=tp.past_policy,
                options=tp.options,
                # A cron schedule starts at publish time: nothing before it is owed.
                planned_until=now if tp.timing.kind == "cron" else None,
            )
        )
    template.status = TemplateStatus.PUBLISHED
    template.current_version_id = version.id
    template.updated_at = now
    session.add(template)
    session.flush()
    return version


def set_status(session: Session, template_id: int, status: str, now: datetime) -> SopTemplate:
    """Pause, resume or archive. Effects on pending deliveries live in the scheduler."""
    template = get_template(session, template_id)
    allowed = {
        TemplateStatus.PAUSED: {TemplateStatus.PUBLISHED},
        TemplateStatus.PUBLISHED: {TemplateStatus.PAUSED},
        TemplateStatus.ARCHIVED: set(TemplateStatus.ALL) - {TemplateStatus.ARCHIVED},
    }
    if status not in allowed:
        raise TemplateError(f"cannot set status {status!r} directly")
    if template.status not in allowed[status]:
        raise TemplateError(
            f"template {template.name!r} is {template.status}; cannot make it {status}"
        )
    template.status = status
    template.updated_at = now
    session.add(template)
    session.flush()
    return template


def get_version(session: Session, version_id: int) -> TemplateVersion:
    version = session.get(TemplateVersion, version_id)
    if version is None:
        raise NotFound(f"no template version with id {version_id}")
    return version


def current_version(session: Session, template: SopTemplate) -> TemplateVersion:
    if template.current_version_id is None:
        raise TemplateError(f"template {template.name!r} has never been published")
    return get_version(session, template.current_version_id)


def list_versions(session: Session, template_id: int) -> list[TemplateVersion]:
    """A template's published versions, newest first."""
    return list(
        session.exec(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == template_id)
            .order_by(col(TemplateVersion.version).desc())
        ).all()
    )


def touchpoints_of(session: Session, version_id: int) -> list[Touchpoint]:
    return list(
        session.exec(
            select(Touchpoint)
            .where(Touchpoint.version_id == version_id)
            .order_by(col(Touchpoint.position))
        ).all()
    )


def version_spec(version: TemplateVersion) -> TemplateSpec:
    return TemplateSpec.model_validate(version.spec)
