"""Who starts an SOP: the enroll side of the audience reactions.

A new-friend template enrolls a contact on ``friend_added`` after it went live
(anchored at the add time); a tagged or group template enrolls a target when it
*starts* matching the segment (anchored at the tag time, the join time or the
fixed start); publishing a fixed-start tagged template or a group template
enrolls every target matching at that moment, set-based (``enroll_segment``).
Exits and re-entry are ``scheduler.flows.membership``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, literal, not_, select
from sqlmodel import Session, col

from audiences.applying import Applied
from audiences.models import Tag
from audiences.segment_queries import segment_query
from audiences.tables import TAG_ASSIGNMENTS, target_table
from audiences.target_states import TargetState
from scheduler.flows import exclusivity
from scheduler.outbox import service as scheduler_service
from scheduler.outbox import set_enroll
from scheduler.outbox.repository import ENROLLMENTS, chunked
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion
from sop_templates.schemas import TemplateSpec
from sop_templates.timing import get_zone, local_to_utc
from sopbot.clock import ensure_utc

log = logging.getLogger("sopbot.membership")

ENROLL_CHUNK = 10_000


@dataclass
class Live:
    template: SopTemplate
    version: TemplateVersion
    spec: TemplateSpec
    live_since: datetime


def live_templates(
    session: Session, target_kind: str | None = None
) -> tuple[list[Live], list[dict[str, Any]]]:
    """Published templates whose live version is bound to a segment, and the
    live versions that cannot be read (each reported, none holding up the rest)."""
    stmt = (
        select(SopTemplate, TemplateVersion)
        .join(TemplateVersion, col(TemplateVersion.id) == SopTemplate.current_version_id)
        .where(col(SopTemplate.status) == TemplateStatus.PUBLISHED)
        .order_by(col(SopTemplate.id))  # the oldest first: it wins a mutual exclusion
    )
    if target_kind:
        stmt = stmt.where(col(SopTemplate.target_kind) == target_kind)
    rows = session.execute(stmt).all()
    if not rows:
        return [], []
    first_published = dict(
        session.execute(
            select(col(TemplateVersion.template_id), func.min(TemplateVersion.published_at))
            .where(col(TemplateVersion.template_id).in_([t.id for t, _ in rows]))
            .group_by(col(TemplateVersion.template_id))
        ).all()
    )
    out = []
    unreadable: list[dict[str, Any]] = []
    for template, version in rows:
        try:
            spec = templates_service.version_spec(version)
        except ValueError as exc:  # a version stored before a validation rule tightened
            log.error("template %s v%s cannot be read: %s", template.id, version.version, exc)
            unreadable.append(
                {"template_id": template.id, "template": template.name, "error": str(exc)[:500]}
            )
            continue
        if spec.segment is not None:
            out.append(Live(template, version, spec, ensure_utc(first_published[template.id])))
    return out, unreadable


def _has_exit_tag(spec: TemplateSpec, state: TargetState) -> bool:
    return any(tag in state.tags for tag in spec.exit.tags_added)


def starters(live: Live, applied: Applied, now: datetime) -> dict[int, datetime]:
    """``{target id: anchor}`` of the targets of this batch that now start
    belonging in ``live`` (re-entry decides whether they may enroll again)."""
    spec, segment = live.spec, live.spec.segment
    assert segment is not None
    candidates: dict[int, datetime] = {}
    if segment.kind == "new_friends":
        for key in applied.joined:
            after = applied.after[key]
            if (
                after.active
                and after.joined_at >= live.live_since
                and segment.matches(after.facts())
                and not _has_exit_tag(spec, after)
            ):
                candidates[key[1]] = after.joined_at
    else:
        for key, after in applied.after.items():
            if key[0] != spec.target or not after.active:
                continue
            before = applied.before[key]
            if not segment.matches(after.facts()) or _has_exit_tag(spec, after):
                continue
            if before is not None and before.active and segment.matches(before.facts()):
                continue  # it matched already: not a start
            candidates[key[1]] = anchor_for(spec, after, now)
    return candidates


def anchor_for(spec: TemplateSpec, target: TargetState, now: datetime) -> datetime:
    """The instant a template's timings count from for this target."""
    if spec.anchor == "fixed":
        return fixed_start(spec)
    if spec.anchor == "tag":
        tagged_at = target.tags.get(spec.anchor_tag or "")
        return tagged_at if tagged_at is not None else now
    return target.joined_at


def fixed_start(spec: TemplateSpec) -> datetime:
    """``start_at`` as UTC: a naive value is local time in the template's zone."""
    assert spec.start_at is not None
    if spec.start_at.tzinfo is None:
        return local_to_utc(spec.start_at, get_zone(spec.timezone))
    return ensure_utc(spec.start_at)


def enrolls_at_publish(spec: TemplateSpec) -> bool:
    """Group templates and fixed-start tagged templates take in everyone matching
    when published; new-friend and tag-anchored ones only those who join/match later."""
    if spec.segment is None:
        return False
    return spec.segment.kind == "groups" or (
        spec.segment.kind == "tagged" and spec.anchor == "fixed"
    )


def _segment_newcomers(
    session: Session, spec: TemplateSpec, template_id: int, now: datetime
) -> tuple[Any, dict[str, int]]:
    """``SELECT id`` of the active targets in the template's segment that were
    never enrolled in it and carry none of its exit tags, and the ids of the
    exit and anchor tags by name."""
    segment = spec.segment
    assert segment is not None
    table = target_table(spec.target)
    query = segment_query(session, spec.target, segment, now=now)
    tag_ids = dict(
        session.execute(
            select(col(Tag.name), col(Tag.id)).where(
                col(Tag.name).in_([*spec.exit.tags_added, spec.anchor_tag or ""])
            )
        ).all()
    )

    def has_tag(name: str) -> Any:
        if name not in tag_ids:
            return false()
        return exists().where(
            TAG_ASSIGNMENTS.c.tag_id == tag_ids[name],
            TAG_ASSIGNMENTS.c.target_kind == spec.target,
            TAG_ASSIGNMENTS.c.target_id == table.c.id,
        )

    enrolled = exists().where(
        ENROLLMENTS.c.template_id == template_id,
        ENROLLMENTS.c.target_kind == spec.target,
        ENROLLMENTS.c.target_id == table.c.id,
    )
    conditions = [not_(enrolled), *(not_(has_tag(t)) for t in spec.exit.tags_added)]
    return query.where(and_(*conditions)), tag_ids


def segment_targets(
    session: Session, spec: TemplateSpec, template_id: int, now: datetime
) -> list[tuple[int, datetime]]:
    """``(target id, anchor)`` of every active target in the template's segment
    that was never enrolled in it and carries none of its exit tags — one query."""
    query, tag_ids = _segment_newcomers(session, spec, template_id, now)
    table = target_table(spec.target)
    if spec.anchor == "fixed":  # one anchor for everyone: no need to read it per row
        start = ensure_utc(fixed_start(spec))
        ids = session.execute(query.order_by(table.c.id)).scalars()
        return [(target_id, start) for target_id in ids]
    if spec.anchor == "tag" and spec.anchor_tag in tag_ids:
        anchor: ColumnElement[Any] = func.coalesce(
            select(TAG_ASSIGNMENTS.c.tagged_at)
            .where(
                TAG_ASSIGNMENTS.c.tag_id == tag_ids[spec.anchor_tag or ""],
                TAG_ASSIGNMENTS.c.target_kind == spec.target,
                TAG_ASSIGNMENTS.c.target_id == table.c.id,
            )
            .scalar_subquery(),
            literal(now, table.c.joined_at.type),
        )
    elif spec.anchor == "tag":  # nobody carries the anchor tag yet
        anchor = literal(now, table.c.joined_at.type)
    else:
        anchor = table.c.joined_at
    stmt = query.add_columns(anchor.label("anchor_at")).order_by(table.c.id)
    return [(row[0], ensure_utc(row[1])) for row in session.execute(stmt).all()]


def exclusions(session: Session, template_id: int, spec: TemplateSpec) -> set[int]:
    """Ids of the SOPs ``template_id`` must not share a target with (its own
    ``exclusive_with`` and every live SOP listing it: ``scheduler.flows.exclusivity``)."""
    live, _ = live_templates(session, spec.target)
    declared = [(item.template.id, item.spec.exclusive_with) for item in live]
    declared = [d for d in declared if d[0] != template_id] + [(template_id, spec.exclusive_with)]
    return exclusivity.partners(declared).get(template_id, set())  # type: ignore[arg-type]


def publish_targets(
    session: Session, spec: TemplateSpec, template_id: int, now: datetime
) -> tuple[list[tuple[int, datetime]], dict[int, int]]:
    """What publishing enrolls: ``segment_targets`` without the targets already
    in an SOP this one excludes (returned apart: ``{target: that SOP's id}``)."""
    pairs = segment_targets(session, spec, template_id, now)
    return exclusivity.split(session, spec.target, pairs, exclusions(session, template_id, spec))


@dataclass
class SegmentEnrollment:
    enrolled: int = 0
    deliveries: int = 0
    skipped: int = 0
    excluded: int = 0  # in an SOP this one excludes: recorded skipped, not enrolled
    planned_later: int = 0  # touchpoints the planner writes later (scheduler.flows.fan_out)


def enroll_segment(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    now: datetime,
    *,
    progress: Callable[[int], None] | None = None,
    set_based: bool = True,
) -> SegmentEnrollment:
    """Enroll everyone in the segment of a just-published version, where the
    template says so (``enrolls_at_publish``), set-based: with a fixed start
    (one anchor for everyone) and no mutually exclusive SOPs in SQL from end
    to end (``scheduler.outbox.set_enroll``); with anchors per target (a group SOP
    counted from each group's join time) the segment is evaluated in SQL and
    its rows built in chunks of 10,000. ``set_based=False`` takes the second
    way for a fixed start too (what the first is tested and measured against)."""
    spec = templates_service.version_spec(version)
    result = SegmentEnrollment()
    if not enrolls_at_publish(spec):
        return result
    excludes = exclusions(session, template.id, spec)  # type: ignore[arg-type]
    if set_based and spec.anchor == "fixed" and not excludes:
        # Exclusivity needs each target checked against the SOPs it excludes:
        # an SOP that has any takes the row-by-row way below.
        query, _ = _segment_newcomers(session, spec, template.id, now)  # type: ignore[arg-type]
        written = set_enroll.enroll_all(
            session, template, version, query, ensure_utc(fixed_start(spec)), now
        )
        if progress:
            progress(written.enrolled)
        return SegmentEnrollment(
            written.enrolled,
            written.deliveries,
            written.skipped,
            planned_later=written.planned_later,
        )
    pairs = segment_targets(session, spec, template.id, now)  # type: ignore[arg-type]
    pairs, excluded = exclusivity.split(session, spec.target, pairs, excludes)
    result.excluded = exclusivity.record_skips(session, template, version, excluded, now)
    for chunk in chunked(pairs, ENROLL_CHUNK):
        enrolled = scheduler_service.enroll(session, template, chunk, now, version=version)
        result.enrolled += enrolled.enrolled
        result.deliveries += enrolled.deliveries
        result.skipped += enrolled.skipped
        if progress:
            progress(len(chunk))
    return result
