"""Approval (审批 / 签稿): content is signed off before it goes out.

When the workspace requires approval, a draft is submitted, an approver who did
not write it approves it, and only then may it be published. Editing the draft
after it was submitted or approved voids that: it must be submitted again.
Without the requirement, submitting is optional and publishing needs nothing.

Users are plain ``(id, name)`` pairs here: they belong to the api package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from sop_templates import service as templates_service
from sop_templates.approval_models import ReviewState, TemplateReview
from sop_templates.models import SopTemplate, TemplateStatus
from sop_templates.service import TemplateError


class ApprovalError(TemplateError):
    """A review step that is not allowed; the message says why."""


REASON_REQUIRED = "a rejection needs a reason: say what the authors should change"


def rejected_drafts(session: Session) -> list[tuple[SopTemplate, TemplateReview]]:
    """Drafts sent back and not resubmitted yet, with the reviewer's reason."""
    rows = session.exec(
        select(SopTemplate, TemplateReview)
        .where(col(TemplateReview.template_id) == col(SopTemplate.id))
        .where(col(TemplateReview.state) == ReviewState.REJECTED)
        .order_by(col(TemplateReview.decided_at).desc())
    ).all()
    return [(t, r) for t, r in rows]


@dataclass(frozen=True)
class Reviewer:
    id: int | None
    name: str


def draft_digest(draft: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(draft, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()


def open_review(session: Session, template_id: int) -> TemplateReview | None:
    return session.exec(
        select(TemplateReview)
        .where(
            TemplateReview.template_id == template_id,
            col(TemplateReview.state).in_(ReviewState.OPEN),
        )
        .order_by(col(TemplateReview.id).desc())
    ).first()


def open_reviews(session: Session, template_ids: list[int]) -> dict[int, TemplateReview]:
    """Each template's open review (the newest), in one query, for lists."""
    found: dict[int, TemplateReview] = {}
    if not template_ids:
        return found
    for review in session.exec(
        select(TemplateReview)
        .where(
            col(TemplateReview.template_id).in_(template_ids),
            col(TemplateReview.state).in_(ReviewState.OPEN),
        )
        .order_by(col(TemplateReview.id))
    ).all():
        found[review.template_id] = review  # the newest wins
    return found


def reviews(session: Session, template_id: int) -> list[TemplateReview]:
    return list(
        session.exec(
            select(TemplateReview)
            .where(TemplateReview.template_id == template_id)
            .order_by(col(TemplateReview.id).desc())
        ).all()
    )


def _cycle(session: Session, template_id: int, now: datetime) -> TemplateReview:
    review = open_review(session, template_id)
    if review is None:
        review = TemplateReview(template_id=template_id, created_at=now)
        session.add(review)
    return review


def _add_author(review: TemplateReview, who: Reviewer) -> None:
    if who.id is not None and all(a.get("id") != who.id for a in review.authors):
        review.authors = [*review.authors, {"id": who.id, "name": who.name}]


def _back_to_draft(template: SopTemplate, now: datetime) -> None:
    if template.status == TemplateStatus.PENDING_APPROVAL:
        template.status = TemplateStatus.DRAFT
        template.updated_at = now


def note_edit(session: Session, template_id: int, editor: Reviewer, now: datetime) -> None:
    """Record who edited the draft. An edit after submission or approval voids it."""
    template = templates_service.get_template(session, template_id)
    review = _cycle(session, template_id, now)
    _add_author(review, editor)
    changed = review.draft_digest is not None and review.draft_digest != draft_digest(
        template.draft
    )
    if review.state == ReviewState.REJECTED or (
        review.state in (ReviewState.PENDING, ReviewState.APPROVED) and changed
    ):
        review.state = ReviewState.EDITING
        review.draft_digest = None
        _back_to_draft(template, now)
    session.add(review)
    session.add(template)
    session.flush()


def submit(session: Session, template_id: int, who: Reviewer, now: datetime) -> TemplateReview:
    """Submit the current draft for approval (it must be valid)."""
    template = templates_service.get_template(session, template_id)
    if template.status == TemplateStatus.ARCHIVED:
        raise ApprovalError(f"template {template.name!r} is archived")
    templates_service.parse_spec(template.draft)
    review = _cycle(session, template_id, now)
    digest = draft_digest(template.draft)
    if review.state == ReviewState.APPROVED and review.draft_digest == digest:
        raise ApprovalError("this draft is already approved; it can be published")
    _add_author(review, who)
    review.state = ReviewState.PENDING
    review.draft_digest = digest
    review.submitted_by, review.submitted_by_name, review.submitted_at = who.id, who.name, now
    review.decided_by = review.decided_by_name = review.decided_at = review.note = None
    if template.current_version_id is None:
        template.status = TemplateStatus.PENDING_APPROVAL
        template.updated_at = now
        session.add(template)
    session.add(review)
    session.flush()
    return review


def _pending(session: Session, template: SopTemplate) -> TemplateReview:
    review = open_review(session, template.id)  # type: ignore[arg-type]
    if review is None or review.state != ReviewState.PENDING:
        raise ApprovalError(f"template {template.name!r} is not waiting for approval")
    return review


def _decide(
    review: TemplateReview, state: str, who: Reviewer, now: datetime, note: str | None
) -> None:
    review.state = state
    review.decided_by, review.decided_by_name, review.decided_at = who.id, who.name, now
    review.note = (note or "").strip() or None


def approve(
    session: Session, template_id: int, who: Reviewer, now: datetime, note: str | None = None
) -> TemplateReview:
    """Approve the submitted draft. The approver cannot be one of its authors."""
    template = templates_service.get_template(session, template_id)
    review = _pending(session, template)
    if who.id is not None and (
        who.id == review.submitted_by or any(a.get("id") == who.id for a in review.authors)
    ):
        raise ApprovalError("you wrote or submitted this draft; another approver must approve it")
    if review.draft_digest != draft_digest(template.draft):
        raise ApprovalError("the draft changed after it was submitted; submit it again")
    _decide(review, ReviewState.APPROVED, who, now, note)
    session.add(review)
    session.flush()
    return review


def reject(
    session: Session, template_id: int, who: Reviewer, now: datetime, note: str | None = None
) -> TemplateReview:
    """Send the draft back to its authors with the reason (required: the
    authors see it on the template, the dashboard and in the audit log)."""
    if not (note or "").strip():
        raise ApprovalError(REASON_REQUIRED)
    template = templates_service.get_template(session, template_id)
    review = _pending(session, template)
    _decide(review, ReviewState.REJECTED, who, now, note)
    _back_to_draft(template, now)
    session.add_all([review, template])
    session.flush()
    return review


def check_publishable(session: Session, template: SopTemplate, required: bool) -> None:
    """Raise unless the draft may be published (approved, when that is required)."""
    if not required:
        return
    review = open_review(session, template.id)  # type: ignore[arg-type]
    if review is None or review.state != ReviewState.APPROVED:
        raise ApprovalError(
            f"template {template.name!r} needs approval before publishing: submit it, "
            "then an approver who did not write it approves it"
        )
    if review.draft_digest != draft_digest(template.draft):
        raise ApprovalError("the draft changed after it was approved; submit it again")


def close_on_publish(session: Session, template_id: int, now: datetime) -> None:
    review = open_review(session, template_id)
    if review is not None:
        review.state = ReviewState.PUBLISHED
        session.add(review)
        session.flush()


def review_state(session: Session, template: SopTemplate) -> dict[str, Any]:
    """What the editor shows: the open review, if any, and whether it is current."""
    review = open_review(session, template.id)  # type: ignore[arg-type]
    if review is None:
        return {"state": None}
    return {
        "state": review.state,
        "authors": review.authors,
        "submitted_by": review.submitted_by_name,
        "submitted_at": review.submitted_at,
        "decided_by": review.decided_by_name,
        "decided_at": review.decided_at,
        "note": review.note,
        "current": review.draft_digest == draft_digest(template.draft),
    }
