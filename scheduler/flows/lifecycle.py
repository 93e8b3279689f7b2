"""A template's lifecycle: publish, enroll, pause, resume, archive — each done in
exactly one function here, whoever asks (the JSON API, the operator UI, the CLI,
the demo).

Publishing is: the approval check (where the workspace requires it), freezing
the draft into an immutable version, enrolling the segment where the template
says so, keeping or moving the targets already enrolled, closing the review, and
the audit entry.

The audit log and the workspace's approval setting belong to the api package,
which this one may not import (ARCHITECTURE's dependency order), so the caller
passes them in an :class:`Actor`: ``api.template_actions`` builds one for a
request and one for the CLI and the demo. Both fields are required, so no
caller can publish without an approval decision or an audit entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from scheduler.flows import enrollment, versions
from scheduler.flows.versions import MIGRATIONS, MoveResult
from scheduler.outbox import service as scheduler_service
from sop_templates import approvals
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion


class Audit(Protocol):
    def __call__(
        self, action: str, template_id: int, summary: str, detail: dict[str, Any] | None
    ) -> None: ...


@dataclass(frozen=True)
class Actor:
    """Who asks, as far as the lifecycle needs to know."""

    require_approval: bool  # the workspace's setting, as the caller read it
    audit: Audit  # writes one audit entry (action, template id, summary, detail)


@dataclass
class PublishOutcome:
    version: TemplateVersion
    migration: str
    enrolled: int = 0
    deliveries: int = 0
    # touchpoints whose rows the planner writes shortly before they fall due
    planned_later: int = 0
    moved: MoveResult = field(default_factory=MoveResult)

    def as_dict(self, template_id: int) -> dict[str, Any]:
        return {
            "template_id": template_id,
            "version_id": self.version.id,
            "version": self.version.version,
            "enrolled": self.enrolled,
            "deliveries": self.deliveries,
            "planned_later": self.planned_later,
            "migrate": self.migration,
            "moved": asdict(self.moved),
        }


def publish(
    session: Session,
    template_id: int,
    now: datetime,
    actor: Actor,
    *,
    migrate: str = "keep",
    progress: Callable[[int], None] | None = None,
) -> PublishOutcome:
    """Publish the draft as a new version: approved first where the workspace
    requires it; the segment enrolled where the template says so (group and
    fixed-start tagged SOPs); targets already enrolled kept on their version or
    moved to the new one; the review closed; who did it audited."""
    if migrate not in MIGRATIONS:
        raise templates_service.TemplateError(f"migrate must be 'keep' or 'move', not {migrate!r}")
    template = templates_service.get_template(session, template_id)
    approvals.check_publishable(session, template, actor.require_approval)
    had_version = template.current_version_id is not None
    version = templates_service.freeze_draft(session, template_id, now)
    approvals.close_on_publish(session, template_id, now)
    enrolled = enrollment.enroll_segment(session, template, version, now, progress=progress)
    outcome = PublishOutcome(
        version=version,
        migration=migrate,
        enrolled=enrolled.enrolled,
        deliveries=enrolled.deliveries,
        planned_later=enrolled.planned_later,
    )
    if migrate == "move" and had_version:
        outcome.moved = versions.move_to_version(session, template_id, version, now)
    actor.audit(
        "template.publish",
        template_id,
        f"v{version.version} ({migrate})",
        outcome.as_dict(template_id),
    )
    return outcome


def enroll(
    session: Session,
    template: SopTemplate,
    targets: Sequence[tuple[int, datetime]],
    now: datetime,
    actor: Actor,
    *,
    named: str = "",
    detail: dict[str, Any] | None = None,
) -> scheduler_service.EnrollResult:
    """Enroll ``(target id, anchor)`` pairs into the live version by hand.
    ``named`` says in the audit entry which targets these were, where one line can."""
    result = scheduler_service.enroll(session, template, targets, now)
    summary = f"{result.enrolled} enrolled"
    actor.audit(
        "template.enroll",
        template.id,  # type: ignore[arg-type]
        f"{named}: {summary}" if named else summary,
        detail,
    )
    return result


def pause(session: Session, template_id: int, now: datetime, actor: Actor) -> SopTemplate:
    """Hold a live template: its deliveries wait until it is resumed."""
    template = templates_service.set_status(session, template_id, TemplateStatus.PAUSED, now)
    actor.audit("template.pause", template_id, template.name, None)
    return template


def resume(session: Session, template_id: int, now: datetime, actor: Actor) -> SopTemplate:
    """Resume a paused template: what it held goes out (once)."""
    template = templates_service.set_status(session, template_id, TemplateStatus.PUBLISHED, now)
    actor.audit("template.resume", template_id, template.name, None)
    return template


def archive(session: Session, template_id: int, now: datetime, actor: Actor) -> int:
    """Archive the template: its enrollments end and its pending deliveries are
    cancelled. Returns how many deliveries were cancelled."""
    cancelled = scheduler_service.archive_template(session, template_id, now)
    actor.audit("template.archive", template_id, f"{cancelled} pending deliveries cancelled", None)
    return cancelled
