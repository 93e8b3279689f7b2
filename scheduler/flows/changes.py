"""The one audience write path, with its SOP reactions bound.

Every entry point that changes contacts, groups, tags or group membership calls
this module: ``POST /api/events`` (:func:`apply_events`), the WeCom inbox job
(:func:`apply_pending`), the CSV import (:func:`import_contacts`), ``POST
/api/contacts`` / ``POST /api/groups``, the CLI, the UI and the demo
(:func:`upsert_contact`, :func:`upsert_group`), and exit actions
(:func:`add_tags`). Each goes through the unit of work in ``audiences.changes``
with :func:`react` (goals, then ``scheduler.flows.membership.react``) as its reaction, so a tag is a tag
whichever way it came in: the same SOPs start and stop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col

from audiences import changes as audience_changes
from audiences import importer, inbox
from audiences.applying import Applied
from audiences.changes import Changes, EventsRejected, Reaction
from audiences.events import ItemError
from audiences.import_options import ImportOptions
from audiences.models import Contact, GroupChat, InboxStatus
from audiences.schemas import ContactIn, GroupIn
from scheduler.flows import goals, membership
from scheduler.outbox.models import Enrollment
from scheduler.outbox.repository import chunked, insert_rows, instant_param

__all__ = ["EventsRejected", "Reaction"]


def react(session: Session, applied: Applied, now: datetime) -> Reaction:
    """The SOP reactions to an audience change: goals reached (recorded before
    an exit could end the enrollment), then who starts and who stops."""
    goals.react(session, applied, now)
    return membership.react(session, applied, now)


def apply(session: Session, events: Sequence[Any], now: datetime) -> Changes:
    """Apply events (raw or parsed) and react, all or nothing (``EventsRejected``)."""
    return audience_changes.apply(session, events, now, react=react)


def set_tag_group(
    session: Session, tags: Sequence[str], group: str | None, now: datetime
) -> Changes:
    """Tags (by name) into a tag group, or none (``audiences.changes.set_tag_group``)."""
    return audience_changes.set_tag_group(session, tags, group, now, react=react)


def rename_tag_group(session: Session, old: str, new: str, now: datetime) -> tuple[int, Changes]:
    """Every tag of group ``old`` into ``new`` (``audiences.changes.rename_tag_group``)."""
    return audience_changes.rename_tag_group(session, old, new, now, react=react)


def apply_clicks(session: Session, events: Sequence[Any], now: datetime) -> Changes:
    """Apply ``link_clicked`` events (``scheduler.flows.clicks``) like any event;
    a batch that touched no target (link previews only, or targets deleted
    since) is recorded without asking every live SOP about it."""

    def react_if_touched(session: Session, applied: Applied, now: datetime) -> Reaction:
        return react(session, applied, now) if applied.after else Reaction()

    return audience_changes.apply(session, events, now, react=react_if_touched)


def upsert_contact(session: Session, data: ContactIn, now: datetime) -> tuple[Contact, Changes]:
    """Create or update a contact from a form or CLI body; its tags start SOPs."""
    return audience_changes.upsert_contact(session, data, now, react=react)


def upsert_group(session: Session, data: GroupIn, now: datetime) -> tuple[GroupChat, Changes]:
    """Create or update a group chat from a form or CLI body; its tags start SOPs."""
    return audience_changes.upsert_group(session, data, now, react=react)


def apply_pending(session: Session, now: datetime, *, limit: int = 500) -> inbox.InboxResult:
    """The inbox job: apply stored WeCom callbacks, each failing alone."""
    return inbox.apply_pending(session, now, react=react, limit=limit)


def import_contacts(
    session: Session,
    parsed: importer.ParsedCsv,
    now: datetime,
    *,
    allow_partial: bool = False,
    create_accounts: bool = False,
    progress: Callable[[int], None] | None = None,
) -> importer.ImportReport:
    """Apply a parsed CSV file (``audiences.importer.apply_import``)."""
    return importer.apply_import(
        session,
        parsed,
        now,
        react=react,
        allow_partial=allow_partial,
        create_accounts=create_accounts,
        progress=progress,
    )


def import_file(
    session: Session,
    data: bytes,
    now: datetime,
    options: ImportOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> importer.ImportReport:
    """Read a CSV file and apply it (unless ``options.dry_run``): the CLI and the
    upload route alike. ``progress(rows_done, rows_total)`` follows the writes.
    The caller commits when ``report.applied``, and rolls back otherwise."""
    parsed = importer.parse_csv(data, timezone=options.timezone, encoding=options.encoding)
    total = len(parsed.rows)
    report = import_contacts(
        session,
        parsed,
        now,
        allow_partial=options.allow_partial,
        create_accounts=options.create_accounts,
        progress=(lambda n: progress(n, total)) if progress else None,
    )
    report.dry_run = options.dry_run
    if options.dry_run:
        report.applied = False
    return report


@dataclass
class EventsReport:
    applied: int = 0
    duplicates: int = 0
    created: int = 0  # contacts / groups created
    updated: int = 0  # contacts / groups changed
    membership: Reaction = field(default_factory=Reaction)
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
            # not enrolled: already in a mutually exclusive SOP (scheduler.flows.exclusivity)
            "excluded": self.membership.excluded,
            "failed_templates": self.membership.failures,
            "results": self.results,
        }


def apply_events(
    session: Session, items: Sequence[Any], now: datetime, *, source: str = "api"
) -> EventsReport:
    """Validate, dedupe, apply and react to a batch of events, all or nothing.

    ``items`` are event dicts (or parsed events). An event whose ``id`` was seen
    before is reported as a duplicate and changes nothing. Any invalid event, or
    one naming an unknown account / contact / group, raises ``EventsRejected``
    with a per-item report; the caller rolls back.
    """
    parsed = audience_changes.parse_all(items)

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
    try:
        done = apply(session, [parsed[i] for i in fresh], now)
    except EventsRejected as exc:  # name the events by their place in the whole batch
        raise EventsRejected(
            len(items), [ItemError(fresh[e.index], e.loc, e.msg) for e in exc.errors]
        ) from None
    report.applied = len(fresh)
    report.created, report.updated = done.applied.created, done.applied.updated
    report.membership = done.reaction
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
    table = inbox.INBOX
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
        inbox.record(session, unkeyed)
    return claimed


@dataclass
class BulkResult:
    """What an operator's action on many contacts or groups did."""

    targets: int = 0  # contacts / groups the action was applied to
    reaction: Reaction = field(default_factory=Reaction)
    templates: set[int] = field(default_factory=set)  # SOPs that enrolled someone


BULK_CHUNK = 1000


def act_on_targets(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    action: str,
    now: datetime,
    tags: Sequence[str] = (),
) -> BulkResult:
    """Tag, untag or remove contacts / groups chosen in the UI (one, a
    selection, or every row a filter matches): events through the same unit of
    work as ``POST /api/events``, so the same SOPs enroll and exit. All or
    nothing: ``EventsRejected`` (e.g. an empty tag) writes nothing."""
    result = BulkResult()
    before = _enrollment_templates(session, target_kind, target_ids)
    for chunk in chunked(list(target_ids), BULK_CHUNK):
        events = audience_changes.target_events(session, target_kind, chunk, action, tags)
        done = apply(session, events, now)
        result.targets += len(events)
        result.reaction.add(done.reaction)
    if result.reaction.enrolled:
        after = _enrollment_templates(session, target_kind, target_ids)
        result.templates = {t for t, n in after.items() if n > before.get(t, 0)}
    return result


def _enrollment_templates(
    session: Session, target_kind: str, target_ids: Sequence[int]
) -> dict[int, int]:
    """Enrollments of these targets per template (to name the SOPs an action started)."""
    counts: dict[int, int] = {}
    for chunk in chunked(list(target_ids), BULK_CHUNK):
        for template_id, n in session.execute(
            select(col(Enrollment.template_id), func.count())
            .where(col(Enrollment.target_kind) == target_kind, col(Enrollment.target_id).in_(chunk))
            .group_by(col(Enrollment.template_id))
        ).all():
            counts[template_id] = counts.get(template_id, 0) + n
    return counts


def add_tags(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    tags: Sequence[str],
    now: datetime,
) -> Reaction:
    """Tags sopbot applies itself (an exit action, an operator action): they
    trigger SOPs exactly like tags that arrive as events."""
    applied = audience_changes.tag_targets(session, target_kind, target_ids, tags, now)
    return react(session, applied, now)
