"""Goals: the conversions an SOP is for.

A template's ``goal`` is a tag added (``tags_added``) or an event
(``link_clicked``, ``contact_updated``) with attribute filters (``where``),
within a window after enrollment (``within``). This reaction runs in the one
audience write path (``scheduler.flows.changes``), before the enroll/exit
reactions; tracked-link clicks arrive there too, as ``link_clicked`` events
(``scheduler.flows.clicks``).

A conversion is recorded once per enrollment (a unique key), at the time of the
event, attributed to the last touchpoint sent before it and listing every
touchpoint sent before it (the funnel). Held-out enrollments convert too: that
is what the SOP's lift is measured against. With ``exit: true`` reaching the
goal ends the enrollment like an exit condition (pending deliveries cancelled).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from audiences.applying import Applied
from audiences.target_states import TargetState
from scheduler.flows import membership
from scheduler.outbox.models import DeliveryStatus, EnrollmentStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS, chunked, insert_ignore
from scheduler.outcomes.models import Conversion
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.schemas import GoalSpec, TemplateSpec
from sopbot.clock import ensure_utc

log = logging.getLogger("sopbot.goals")

CONVERSIONS = Conversion.__table__  # type: ignore[attr-defined]
# How far back an enrollment may still convert: the longest window allowed.
LONGEST_WINDOW = timedelta(days=366)


@dataclass(frozen=True)
class Reached:
    """An enrollment whose goal was reached at ``at``."""

    enrollment: Any  # row: id, template_id, version_id, target_kind, target_id, holdout
    at: datetime
    goal: str
    exit: bool


def react(session: Session, applied: Applied, now: datetime) -> int:
    """Record the conversions a batch of audience changes makes; returns how
    many. Fails alone (logged): a goal never blocks the change itself."""
    templates = goal_templates(session)
    if not templates or not applied.after:
        return 0  # the common case costs one small query
    try:
        with session.begin_nested():
            rows, specs = _candidates(session, list(applied.after), now, templates=templates)
            reached = []
            for row in rows:
                spec = specs.get(row.version_id)
                if spec is None or spec.goal is None:
                    continue
                key = (row.target_kind, row.target_id)
                hit = audience_goal(
                    spec.goal,
                    applied.before.get(key),
                    applied.after[key],
                    now,
                    template_id=row.template_id,
                )
                if hit is not None:
                    reached.append(Reached(row, hit[0], hit[1], spec.goal.exit))
            return _record(session, reached, now)
    except Exception as exc:  # poison: the audience change goes on
        log.error("goals could not be evaluated: %s", exc)
        return 0


def audience_goal(
    goal: GoalSpec,
    before: TargetState | None,
    after: TargetState,
    now: datetime,
    *,
    template_id: int | None = None,
) -> tuple[datetime, str] | None:
    """(when, what) if this change reaches ``goal``. Only changes count: a tag
    added, attributes that start matching, a person's click on a tracked link
    of ``template_id`` (its first matching one in the batch)."""
    if goal.event == "link_clicked":
        for click in after.clicked:
            if click.template_id != template_id or click.bot:
                continue
            wanted_step = goal.where.get("touchpoint")
            wanted_url = goal.where.get("url")
            if wanted_step is not None and wanted_step != click.touchpoint_name:
                continue
            if wanted_url is not None and wanted_url not in click.url:
                continue
            at = ensure_utc(click.occurred_at or now)
            return at, f"link clicked in {click.touchpoint_name!r}"
        return None
    old_tags = set(before.tags) if before else set()
    for tag in goal.tags_added:
        if tag in after.tags and tag not in old_tags:
            return ensure_utc(after.tags[tag] or now), f"tag {tag!r} added"
    if goal.event == "contact_updated" and goal.where:

        def matches(state: TargetState | None) -> bool:
            if state is None:
                return False
            return all(str(state.attributes.get(k)) == v for k, v in goal.where.items())

        if matches(after) and not matches(before):
            pairs = ", ".join(f"{k}={v}" for k, v in goal.where.items())
            return now, f"contact updated: {pairs}"
    return None


def goal_templates(session: Session, *, event: str | None = None) -> set[int]:
    """Templates (published or paused) with a version that has a goal (of the
    ``event`` kind, if given). Read from the stored specs without parsing them."""
    found = set()
    for template_id, spec in session.execute(
        select(TemplateVersion.template_id, TemplateVersion.spec)  # type: ignore[call-overload]
        .join(SopTemplate, col(SopTemplate.id) == TemplateVersion.template_id)
        .where(col(SopTemplate.status).in_([TemplateStatus.PUBLISHED, TemplateStatus.PAUSED]))
    ).all():
        goal = (spec or {}).get("goal")
        if goal and (event is None or goal.get("event") == event):
            found.add(template_id)
    return found


def _candidates(
    session: Session,
    targets: Sequence[tuple[str, int]],
    now: datetime,
    *,
    templates: set[int],
) -> tuple[list[Any], dict[int, TemplateSpec]]:
    """Enrollments of ``targets`` that have not converted and could still, with
    the specs of their versions."""
    e = ENROLLMENTS.c
    by_kind: dict[str, list[int]] = defaultdict(list)
    for kind, target_id in targets:
        by_kind[kind].append(target_id)
    rows: list[Any] = []
    for kind, ids in by_kind.items():
        for chunk in chunked(sorted(set(ids))):
            stmt = select(
                e.id,
                e.template_id,
                e.version_id,
                e.target_kind,
                e.target_id,
                e.enrolled_at,
                e.holdout,
                e.status,
            ).where(
                e.target_kind == kind,
                e.target_id.in_(list(chunk)),
                e.status != EnrollmentStatus.CANCELLED,
                e.enrolled_at >= now - LONGEST_WINDOW,
                ~select(CONVERSIONS.c.id).where(CONVERSIONS.c.enrollment_id == e.id).exists(),
            )
            stmt = stmt.where(e.template_id.in_(sorted(templates)))
            rows += session.execute(stmt).all()
    if not rows:
        return [], {}
    specs = membership._version_specs(session, {r.version_id for r in rows})
    return rows, specs


def _record(session: Session, reached: list[Reached], now: datetime) -> int:
    """Write the conversions (once per enrollment) inside each goal's window,
    with their attribution; exit those whose goal says so."""
    if not reached:
        return 0
    specs = membership._version_specs(session, {r.enrollment.version_id for r in reached})
    rows = []
    exits: dict[int, str] = {}
    for item in reached:
        row = item.enrollment
        spec = specs.get(row.version_id)
        if spec is None or spec.goal is None:
            continue
        enrolled_at = ensure_utc(row.enrolled_at)
        if not enrolled_at <= item.at <= enrolled_at + spec.goal.window:
            continue
        last, touched = attribution(session, row.id, item.at)
        rows.append(
            {
                "enrollment_id": row.id,
                "template_id": row.template_id,
                "version_id": row.version_id,
                "target_kind": row.target_kind,
                "target_id": row.target_id,
                "converted_at": item.at,
                "goal": item.goal[:200],
                "touchpoint_name": last[0] if last else None,
                "delivery_id": last[1] if last else None,
                "variant": last[2] if last else None,
                "touched": touched,
                "holdout": bool(row.holdout),
                "recorded_at": now,
            }
        )
        if item.exit and row.status == EnrollmentStatus.ACTIVE:
            exits[row.id] = f"goal reached: {item.goal}"
    written = insert_ignore(session, CONVERSIONS, rows) if rows else 0
    if exits:
        membership.exit_enrollments(session, exits, now)
    return written


def attribution(
    session: Session, enrollment_id: int, at: datetime
) -> tuple[tuple[str, int, str | None] | None, list[str]]:
    """The last touchpoint sent to the enrollment before ``at`` as (name,
    delivery id, variant), and every touchpoint sent before it, in order."""
    d = DELIVERIES.c
    sent = session.execute(
        select(Touchpoint.name, d.id, d.variant, d.sent_at)  # type: ignore[call-overload]
        .join(Touchpoint, Touchpoint.id == d.touchpoint_id)  # type: ignore[arg-type]
        .where(
            d.enrollment_id == enrollment_id,
            d.status == DeliveryStatus.SENT,
            d.sent_at.is_not(None),
            d.sent_at <= at,
        )
        .order_by(d.sent_at, d.id)
    ).all()
    if not sent:
        return None, []
    touched = list(dict.fromkeys(name for name, *_ in sent))
    name, delivery_id, variant, _ = sent[-1]
    return (name, delivery_id, variant), touched
