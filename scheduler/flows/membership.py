"""Automatic enrollment and exit: SOPs that start and stop by themselves.

Audience events change contacts, groups and tags (``audiences.events``); this
module decides what that means for every published template bound to a
segment, and is the one place allowed to see both sides:

* **enroll** — a new-friend template enrolls a contact on ``friend_added`` after
  it went live (anchored at the add time); a tagged or group template enrolls a
  target when it *starts* matching the segment (anchored at the tag time, the
  join time or the fixed start); publishing a fixed-start tagged template or a
  group template enrolls every target matching at that moment, set-based.
* **exit** — a tag added or removed that the template lists, the target becoming
  inactive (contact deleted/blocked/unsubscribed, group dissolved), or it no
  longer matching the segment: the enrollment becomes ``exited`` and its pending
  deliveries ``cancelled`` with the reason. An exit may add tags (``exit.add_tags``);
  those go through the same path, so they trigger other SOPs (WeCom sends no
  callback for changes made through its API).
* **re-entry** — per template: ``never`` (default), ``after_finish`` (a target
  whose previous run ended may start again) or ``always`` (restart).

Callers own the session (and so the transaction): the API route, the WeCom
inbox job, the importer.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col

from audiences import events as audience_events
from audiences import importer, wecom_events
from audiences import service as audiences_service
from audiences.events import Applied, InvalidEvent, ItemError, TargetKey, TargetState
from audiences.models import Account, InboxStatus, Tag
from audiences.segments import (
    CONTACTS,
    GROUPS,
    TAG_ASSIGNMENTS,
    segment_query,
)
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from scheduler.outbox.repository import ENROLLMENTS, chunked, insert_rows, instant_param
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion
from sop_templates.schemas import TemplateSpec
from sop_templates.timing import get_zone, local_to_utc
from sopbot.clock import ensure_utc
from sopbot.db import rowcount

log = logging.getLogger("sopbot.membership")

ENROLL_CHUNK = 10_000
MAX_CASCADE = 5  # rounds of exit actions adding tags that trigger further exits


class EventsRejected(ValueError):
    """A batch with at least one bad event; nothing of it was applied."""

    def __init__(self, total: int, errors: Sequence[ItemError]) -> None:
        self.total = total
        self.errors = list(errors)
        bad = len({e.index for e in self.errors})
        super().__init__(
            f"{bad} of {total} event{'s' if total != 1 else ''} rejected; nothing was applied"
        )

    def report(self) -> dict[str, Any]:
        by_index: dict[int, list[dict[str, str]]] = defaultdict(list)
        for error in self.errors:
            by_index[error.index].append({"loc": error.loc, "msg": error.msg})
        return {
            "message": str(self),
            "errors": [{"index": e.index, "loc": e.loc, "msg": e.msg} for e in self.errors],
            "results": [
                {"index": i, "status": "rejected", "errors": by_index[i]}
                if i in by_index
                else {"index": i, "status": "not_applied"}
                for i in range(self.total)
            ],
        }


@dataclass
class MembershipResult:
    enrolled: int = 0  # new enrollments
    exited: int = 0  # enrollments ended by an exit condition
    cancelled: int = 0  # pending deliveries cancelled by those exits
    deliveries: int = 0  # delivery rows written for the new enrollments

    def add(self, other: MembershipResult) -> None:
        self.enrolled += other.enrolled
        self.exited += other.exited
        self.cancelled += other.cancelled
        self.deliveries += other.deliveries


@dataclass
class EventsReport:
    applied: int = 0
    duplicates: int = 0
    created: int = 0  # contacts / groups created
    updated: int = 0  # contacts / groups changed
    membership: MembershipResult = field(default_factory=MembershipResult)
    results: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "created": self.created,
            "updated": self.updated,
            "enrolled": self.membership.enrolled,
            "exited": self.membership.exited,
            "cancelled": self.membership.cancelled,
            "results": self.results,
        }


# ------------------------------------------------------------------------- events


def apply_events(
    session: Session, items: Sequence[Any], now: datetime, *, source: str = "api"
) -> EventsReport:
    """Validate, dedupe, apply and react to a batch of events, all or nothing.

    ``items`` are event dicts (or parsed events). An event whose ``id`` was seen
    before is reported as a duplicate and changes nothing. Any invalid event, or
    one naming an unknown account / contact / group, raises ``EventsRejected``
    with a per-item report; the caller rolls back.
    """
    parsed: list[Any] = []
    errors: list[ItemError] = []
    for index, item in enumerate(items):
        try:
            parsed.append(
                item
                if isinstance(item, audience_events.BaseEvent)
                else audience_events.parse_event(item)
            )
        except InvalidEvent as exc:
            parsed.append(None)
            errors += [ItemError(index, loc, msg) for loc, msg in exc.problems]
    if errors:
        raise EventsRejected(len(items), errors)

    # Claim the idempotency keys first: the unique key makes a concurrent replay
    # of the same event lose here instead of applying twice.
    report = EventsReport()
    first_of_key: dict[str, int] = {}
    duplicate_in_batch: set[int] = set()
    key: str | None
    for index, event in enumerate(parsed):
        if event.id:
            key = f"{source}:{event.id}"
            if key in first_of_key:
                duplicate_in_batch.add(index)
            else:
                first_of_key[key] = index
    rows = [
        _inbox_row(event, source, now)
        for index, event in enumerate(parsed)
        if index not in duplicate_in_batch
    ]
    claimed = _claim_keys(session, rows)
    fresh: list[int] = []
    for index, event in enumerate(parsed):
        key = f"{source}:{event.id}" if event.id else None
        if index in duplicate_in_batch or (key is not None and key not in claimed):
            report.results.append({"index": index, "id": event.id, "status": "duplicate"})
            report.duplicates += 1
        else:
            fresh.append(index)
            report.results.append({"index": index, "id": event.id, "status": "applied"})
    applied, problems = audience_events.apply(session, [parsed[i] for i in fresh], now)
    if problems:
        raise EventsRejected(
            len(items), [ItemError(fresh[p.index], p.loc, p.msg) for p in problems]
        )
    report.applied = len(fresh)
    report.created, report.updated = applied.created, applied.updated
    report.membership = react(session, applied, now)
    return report


def _inbox_row(event: Any, source: str, now: datetime) -> dict[str, Any]:
    return {
        "dedupe_key": f"{source}:{event.id}" if event.id else None,
        "source": source,
        "kind": event.kind,
        "payload": event.model_dump(mode="json", exclude_none=True),
        "received_at": now,
        "status": InboxStatus.APPLIED,
        "applied_at": now,
    }


_INBOX_COLUMNS = (
    "dedupe_key",
    "source",
    "kind",
    "payload",
    "received_at",
    "status",
    "applied_at",
)


def _claim_keys(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Insert inbox rows; return the dedupe keys that were new."""
    if not rows:
        return set()
    table = audience_events.INBOX
    if session.get_bind().dialect.name == "sqlite":
        # The transaction holds SQLite's write lock (BEGIN IMMEDIATE): nobody can
        # claim a key between this read and the insert, so no RETURNING is needed.
        keys = [r["dedupe_key"] for r in rows if r["dedupe_key"]]
        each = func.json_each(json.dumps(keys)).table_valued("value")
        taken = set(
            session.execute(
                select(table.c.dedupe_key).where(table.c.dedupe_key.in_(select(each.c.value)))
            ).scalars()
        )
        new = [r for r in rows if r["dedupe_key"] not in taken]
        instant = instant_param(session)
        insert_rows(
            session,
            table,
            _INBOX_COLUMNS,
            [
                (
                    r["dedupe_key"],
                    r["source"],
                    r["kind"],
                    json.dumps(r["payload"], ensure_ascii=False),
                    instant(r["received_at"]),
                    r["status"],
                    instant(r["applied_at"]),
                )
                for r in new
            ],
        )
        return {r["dedupe_key"] for r in new if r["dedupe_key"]}
    # PostgreSQL: concurrent API workers race for a key; the unique key decides.
    stmt = postgresql.insert(table).on_conflict_do_nothing().returning(table.c.dedupe_key)
    claimed: set[str] = set()
    keyed = [r for r in rows if r["dedupe_key"]]
    for chunk in chunked(keyed, 1000):
        claimed.update(k for k in session.execute(stmt, list(chunk)).scalars() if k)
    unkeyed = [r for r in rows if not r["dedupe_key"]]
    if unkeyed:
        audience_events.insert_ignore(session, table, unkeyed)
    return claimed


def add_tags(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    tags: Sequence[str],
    now: datetime,
) -> MembershipResult:
    """Tags sopbot applies itself (an exit action, an operator action): they
    trigger SOPs exactly like tags that arrive as events."""
    applied = _tag_targets(session, target_kind, target_ids, tags, now)
    return react(session, applied, now)


def _tag_targets(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    tags: Sequence[str],
    now: datetime,
) -> Applied:
    states = audience_events.load_states(session, [(target_kind, i) for i in target_ids])
    events = []
    for state in states.values():
        events.append(
            audience_events.TagAdded(
                kind="tag_added",
                target=target_kind,  # type: ignore[arg-type]
                account=state.account if target_kind == "contact" else None,
                external_id=state.external_id,
                tags=list(tags),
            )
        )
    applied, problems = audience_events.apply(session, events, now)
    if problems:  # only if a target vanished underneath us
        raise EventsRejected(len(events), problems)
    return applied


# --------------------------------------------------------------------- reacting


@dataclass
class _Live:
    template: SopTemplate
    version: TemplateVersion
    spec: TemplateSpec
    live_since: datetime


def _live_templates(session: Session, target_kind: str | None = None) -> list[_Live]:
    """Published templates whose live version is bound to a segment."""
    stmt = (
        select(SopTemplate, TemplateVersion)
        .join(TemplateVersion, col(TemplateVersion.id) == SopTemplate.current_version_id)
        .where(col(SopTemplate.status) == TemplateStatus.PUBLISHED)
    )
    if target_kind:
        stmt = stmt.where(col(SopTemplate.target_kind) == target_kind)
    rows = session.execute(stmt).all()
    if not rows:
        return []
    first_published = dict(
        session.execute(
            select(col(TemplateVersion.template_id), func.min(TemplateVersion.published_at))
            .where(col(TemplateVersion.template_id).in_([t.id for t, _ in rows]))
            .group_by(col(TemplateVersion.template_id))
        ).all()
    )
    out = []
    for template, version in rows:
        spec = templates_service.version_spec(version)
        if spec.segment is not None:
            out.append(_Live(template, version, spec, ensure_utc(first_published[template.id])))
    return out


def react(session: Session, applied: Applied, now: datetime) -> MembershipResult:
    """Enroll and exit according to what a batch of events changed."""
    result = MembershipResult()
    live = _live_templates(session)
    for _round in range(MAX_CASCADE):
        exits = _exit_decisions(session, applied)
        exited = _exit(session, {eid: reason for eid, (reason, _, _) in exits.items()}, now)
        result.exited += exited.exited
        result.cancelled += exited.cancelled
        for item in live:
            result.add(_enroll_matching(session, item, applied, now))
        # exit actions: tags sopbot applies, which may trigger other templates
        follow_up: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        for _reason, key, tags in exits.values():
            if tags:
                follow_up[(key[0], tags)].append(key[1])
        if not follow_up:
            break
        merged = Applied()
        for (kind, tags), ids in follow_up.items():
            more = _tag_targets(session, kind, sorted(set(ids)), tags, now)
            merged.before.update({k: v for k, v in more.before.items() if k not in merged.before})
            merged.after.update(more.after)
        applied = merged
    return result


def _exit_decisions(
    session: Session, applied: Applied
) -> dict[int, tuple[str, TargetKey, tuple[str, ...]]]:
    """Active enrollments of the touched targets that must end:
    ``{enrollment id: (reason, target, tags to add)}``."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for kind, target_id in applied.after:
        by_kind[kind].append(target_id)
    enrollments: list[Row[*tuple[Any, ...]]] = []
    for kind, ids in by_kind.items():
        for chunk in chunked(sorted(ids)):
            enrollments += session.execute(
                select(
                    ENROLLMENTS.c.id,
                    ENROLLMENTS.c.version_id,
                    ENROLLMENTS.c.target_kind,
                    ENROLLMENTS.c.target_id,
                ).where(
                    ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE,
                    ENROLLMENTS.c.target_kind == kind,
                    ENROLLMENTS.c.target_id.in_(list(chunk)),
                )
            ).all()
    if not enrollments:
        return {}
    specs = _version_specs(session, {e.version_id for e in enrollments})
    decisions: dict[int, tuple[str, TargetKey, tuple[str, ...]]] = {}
    for enrollment in enrollments:
        key = (enrollment.target_kind, enrollment.target_id)
        reason = exit_reason(specs[enrollment.version_id], applied.before[key], applied.after[key])
        if reason:
            tags = tuple(specs[enrollment.version_id].exit.add_tags)
            decisions[enrollment.id] = (reason, key, tags)
    return decisions


def exit_reason(spec: TemplateSpec, before: TargetState | None, after: TargetState) -> str | None:
    """Why a target enrolled in ``spec`` must leave after changing from ``before``
    to ``after``, or None. Only changes count: a condition that already held
    before the batch was dealt with then."""
    rules = spec.exit
    was_active = before is None or before.active
    if rules.on_inactive and was_active and not after.active:
        return f"{after.kind} {after.status}"
    old_tags = set(before.tags) if before else set()
    for tag in rules.tags_added:
        if tag in after.tags and tag not in old_tags:
            return f"exit condition: tag {tag!r} added"
    for tag in rules.tags_removed:
        if tag in old_tags and tag not in after.tags:
            return f"exit condition: tag {tag!r} removed"
    segment = spec.segment
    if (
        segment is not None
        and rules.on_segment_mismatch
        and before is not None
        and segment.matches(before.facts())
        and not segment.matches(after.facts())
    ):
        return "no longer matches the segment"
    return None


def _version_specs(session: Session, version_ids: set[int]) -> dict[int, TemplateSpec]:
    versions = session.execute(
        select(TemplateVersion).where(col(TemplateVersion.id).in_(sorted(version_ids)))
    ).scalars()
    return {v.id: templates_service.version_spec(v) for v in versions}  # type: ignore[misc]


def exit_enrollments(
    session: Session,
    reasons: dict[int, str],
    now: datetime,
    *,
    status: str = EnrollmentStatus.EXITED,
) -> MembershipResult:
    """End active enrollments (``{id: reason}``) and cancel their pending deliveries
    with the same reason. Cron fan-out only includes active enrollments, so
    nothing more is planned for them either."""
    return _exit(session, reasons, now, status=status)


def _exit(
    session: Session,
    reasons: dict[int, str],
    now: datetime,
    *,
    status: str = EnrollmentStatus.EXITED,
) -> MembershipResult:
    result = MembershipResult()
    by_reason: dict[str, list[int]] = defaultdict(list)
    for enrollment_id, reason in reasons.items():
        by_reason[reason].append(enrollment_id)
    for reason, ids in by_reason.items():
        for chunk in chunked(sorted(ids)):
            result.exited += rowcount(
                session.execute(
                    update(Enrollment)
                    .where(
                        col(Enrollment.id).in_(list(chunk)),
                        col(Enrollment.status) == EnrollmentStatus.ACTIVE,
                    )
                    .values(status=status, exited_at=now, exit_reason=reason[:500])
                )
            )
            result.cancelled += scheduler_service.cancel_pending(
                session, reason=reason, now=now, enrollment_ids=list(chunk)
            )
    return result


def _has_exit_tag(spec: TemplateSpec, state: TargetState) -> bool:
    return any(tag in state.tags for tag in spec.exit.tags_added)


def _enroll_matching(
    session: Session, live: _Live, applied: Applied, now: datetime
) -> MembershipResult:
    """Enroll the targets of this batch that now belong in ``live``."""
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
    if not candidates:
        return MembershipResult()
    return _enroll_with_reentry(session, live, candidates, now)


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


def _enroll_with_reentry(
    session: Session, live: _Live, candidates: dict[int, datetime], now: datetime
) -> MembershipResult:
    spec = live.spec
    runs: dict[int, list[Any]] = defaultdict(list)
    for chunk in chunked(sorted(candidates)):
        for row in session.execute(
            select(
                ENROLLMENTS.c.id, ENROLLMENTS.c.target_id, ENROLLMENTS.c.cycle, ENROLLMENTS.c.status
            ).where(
                ENROLLMENTS.c.template_id == live.template.id,
                ENROLLMENTS.c.target_kind == spec.target,
                ENROLLMENTS.c.target_id.in_(list(chunk)),
            )
        ).all():
            runs[row.target_id].append(row)
    unfinished = set()
    if spec.reentry == "after_finish":
        active_ids = [
            r.id for rs in runs.values() for r in rs if r.status == EnrollmentStatus.ACTIVE
        ]
        unfinished = _with_pending_deliveries(session, active_ids)
    never_finishes = spec.has_cron
    by_cycle: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
    restart: dict[int, str] = {}
    finished: dict[int, str] = {}
    for target_id, anchor in candidates.items():
        previous = runs.get(target_id)
        if not previous:
            by_cycle[0].append((target_id, anchor))
            continue
        next_cycle = max(r.cycle for r in previous) + 1
        active = [r for r in previous if r.status == EnrollmentStatus.ACTIVE]
        if spec.reentry == "never":
            continue
        if active and spec.reentry == "after_finish":
            if never_finishes or any(r.id in unfinished for r in active):
                continue
            finished.update({r.id: "finished" for r in active})
        elif active:  # always: the running cycle stops, a new one starts
            restart.update({r.id: "re-entered: a new cycle started" for r in active})
        by_cycle[next_cycle].append((target_id, anchor))
    result = MembershipResult()
    if restart:
        ended = _exit(session, restart, now)
        result.exited += ended.exited
        result.cancelled += ended.cancelled
    if finished:
        _exit(session, finished, now, status=EnrollmentStatus.COMPLETED)
    for cycle, pairs in sorted(by_cycle.items()):
        for chunk in chunked(pairs, ENROLL_CHUNK):
            enrolled = scheduler_service.enroll(
                session, live.template, chunk, now, cycle=cycle, version=live.version
            )
            result.enrolled += enrolled.enrolled
            result.deliveries += enrolled.deliveries
    return result


def _with_pending_deliveries(session: Session, enrollment_ids: list[int]) -> set[int]:
    out: set[int] = set()
    for chunk in chunked(sorted(enrollment_ids)):
        out.update(
            session.execute(
                select(Delivery.enrollment_id)  # type: ignore[call-overload]
                .where(
                    col(Delivery.enrollment_id).in_(list(chunk)),
                    col(Delivery.status).in_(DeliveryStatus.PENDING),
                )
                .distinct()
            ).scalars()
        )
    return out


# ---------------------------------------------------------------------- publish


@dataclass
class PublishResult:
    version: TemplateVersion
    enrolled: int = 0
    deliveries: int = 0
    skipped: int = 0


def enrolls_at_publish(spec: TemplateSpec) -> bool:
    """Group templates and fixed-start tagged templates take in everyone matching
    when published; new-friend and tag-anchored ones only those who join/match later."""
    if spec.segment is None:
        return False
    return spec.segment.kind == "groups" or (
        spec.segment.kind == "tagged" and spec.anchor == "fixed"
    )


def publish_and_enroll(
    session: Session,
    template_id: int,
    now: datetime,
    *,
    progress: Callable[[int], None] | None = None,
) -> PublishResult:
    """Publish the draft (``sop_templates.service.publish``) and enroll the segment
    where the template says so, set-based: the segment is evaluated in SQL and
    enrolled in chunks of 10,000."""
    version = templates_service.publish(session, template_id, now)
    template = templates_service.get_template(session, template_id)
    spec = templates_service.version_spec(version)
    result = PublishResult(version=version)
    if not enrolls_at_publish(spec):
        return result
    pairs = segment_targets(session, spec, template_id, now)
    for chunk in chunked(pairs, ENROLL_CHUNK):
        enrolled = scheduler_service.enroll(session, template, chunk, now, version=version)
        result.enrolled += enrolled.enrolled
        result.deliveries += enrolled.deliveries
        result.skipped += enrolled.skipped
        if progress:
            progress(len(chunk))
    return result


def segment_targets(
    session: Session, spec: TemplateSpec, template_id: int, now: datetime
) -> list[tuple[int, datetime]]:
    """``(target id, anchor)`` of every active target in the template's segment
    that was never enrolled in it and carries none of its exit tags — one query."""
    segment = spec.segment
    assert segment is not None
    table = CONTACTS if spec.target == "contact" else GROUPS
    query = segment_query(session, spec.target, segment)
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
    if spec.anchor == "fixed":  # one anchor for everyone: no need to read it per row
        start = ensure_utc(fixed_start(spec))
        ids = session.execute(query.where(and_(*conditions)).order_by(table.c.id)).scalars()
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
    stmt = (
        query.add_columns(anchor.label("anchor_at")).where(and_(*conditions)).order_by(table.c.id)
    )
    return [(row[0], ensure_utc(row[1])) for row in session.execute(stmt).all()]


# ------------------------------------------------------------------- WeCom inbox


@dataclass
class InboxResult:
    applied: int = 0
    failed: int = 0
    ignored: int = 0
    membership: MembershipResult = field(default_factory=MembershipResult)


def apply_pending(session: Session, now: datetime, *, limit: int = 500) -> InboxResult:
    """Apply stored events not yet applied (WeCom callbacks), oldest first, each
    in its own savepoint: a bad one is marked failed with the reason and changes
    nothing, the others go ahead."""
    result = InboxResult()
    for row in audience_events.claim_pending(session, limit):
        if row.source == wecom_events.SOURCE:
            items, ignored = wecom_events.to_events(row.payload.get("fields", {}))
        else:
            items, ignored = [row.payload], None
        if ignored:
            audience_events.mark(session, row.id, InboxStatus.IGNORED, now, ignored)  # type: ignore[arg-type]
            result.ignored += 1
            continue
        try:
            with session.begin_nested():
                for account in wecom_events.accounts_of(items) if row.source == "wecom" else ():
                    audiences_service.ensure_account(session, account)
                parsed = [audience_events.parse_event(item) for item in items]
                applied, problems = audience_events.apply(session, parsed, now)
                if problems:
                    raise EventsRejected(len(parsed), problems)
                result.membership.add(react(session, applied, now))
        except (InvalidEvent, EventsRejected) as exc:
            detail = "; ".join(f"{e.loc}: {e.msg}" for e in getattr(exc, "errors", [])) or str(exc)
            log.warning("inbox event %s (%s) failed: %s", row.id, row.kind, detail)
            audience_events.mark(session, row.id, InboxStatus.FAILED, now, detail)  # type: ignore[arg-type]
            result.failed += 1
            continue
        audience_events.mark(session, row.id, InboxStatus.APPLIED, now)  # type: ignore[arg-type]
        result.applied += 1
    return result


# ------------------------------------------------------------------------ import


@dataclass
class ImportReport:
    rows: int = 0  # data rows in the file
    valid: int = 0
    imported: int = 0  # rows written (0 unless applied)
    created: int = 0
    updated: int = 0
    accounts_created: list[str] = field(default_factory=list)
    membership: MembershipResult = field(default_factory=MembershipResult)
    errors: list[importer.RowError] = field(default_factory=list)
    applied: bool = False
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "imported": self.imported,
            "created": self.created,
            "updated": self.updated,
            "accounts_created": self.accounts_created,
            "enrolled": self.membership.enrolled,
            "exited": self.membership.exited,
            "applied": self.applied,
            "dry_run": self.dry_run,
            "errors": [e.as_dict() for e in self.errors],
        }


IMPORT_CHUNK = 1000


def import_contacts(
    session: Session,
    parsed: importer.ParsedCsv,
    now: datetime,
    *,
    allow_partial: bool = False,
    create_accounts: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write parsed CSV rows as contacts; their tags trigger SOPs like any tag.

    All or nothing by default: with any row in error nothing is written
    (``applied`` False). ``allow_partial`` writes the good rows. Unknown accounts
    are row errors unless ``create_accounts``. Importing does not make anyone a
    *new* friend, so new-friend SOPs do not start. A dry run is this followed by
    the caller's rollback.
    """
    report = ImportReport(rows=parsed.total, errors=list(parsed.errors))
    file_error = any(e.field == "file" or e.line <= 1 for e in parsed.errors)
    rows = parsed.rows
    names = sorted({r.account for r in rows if r.account})
    known = (
        set(
            session.execute(
                select(col(Account.external_id)).where(col(Account.external_id).in_(names))
            ).scalars()
        )
        if names
        else set()
    )
    missing = [n for n in names if n not in known]
    if missing and not create_accounts:
        bad = set(missing)
        good = []
        for row in rows:
            if row.account in bad:
                report.errors.append(
                    importer.RowError(
                        row.line,
                        row.account_column,
                        f"unknown account {row.account!r}; register it first or import with "
                        "--create-accounts",
                    )
                )
            else:
                good.append(row)
        rows = good
    report.errors.sort(key=lambda e: e.line)
    report.valid = len(rows)
    if file_error or (report.errors and not allow_partial) or not rows:
        return report
    if missing and create_accounts:
        for name in missing:
            audiences_service.ensure_account(session, name)
        report.accounts_created = missing
    for chunk in chunked(rows, IMPORT_CHUNK):
        events: list[Any] = []
        for row in chunk:
            events.append(
                audience_events.ContactUpdated(
                    kind="contact_updated",
                    account=row.account,
                    external_id=row.external_id,
                    name=row.name,
                    attributes=row.attributes or None,
                    timezone=row.timezone,
                    status=row.status,  # type: ignore[arg-type]
                    joined_at=row.joined_at,
                    create_missing=True,
                )
            )
            if row.tags:
                events.append(
                    audience_events.TagAdded(
                        kind="tag_added",
                        account=row.account,
                        external_id=row.external_id,
                        tags=row.tags,
                    )
                )
        applied, problems = audience_events.apply(session, events, now)
        if problems:  # cannot happen for validated rows; never half-import silently
            raise EventsRejected(len(events), problems)
        report.created += applied.created
        report.updated += applied.updated
        report.membership.add(react(session, applied, now))
        report.imported += len(chunk)
        if progress:
            progress(len(chunk))
    report.applied = True
    return report
