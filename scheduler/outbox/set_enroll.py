"""Enrolling a whole segment that shares one anchor, in SQL: publishing a
fixed-start template (a million contacts) writes its enrollments with one
``INSERT ... SELECT`` over the segment and their deliveries with one more over
the new enrollments, instead of building each row in Python
(``service.enroll``).

With one anchor every target's one-off touchpoint falls due at the same
instant, so what ``service.enroll`` decides per row -- the due time, whether it
is already past (skipped, or sent late), the template's quiet hours (deferred
or skipped), the expiry -- is decided once per touchpoint here and written as
constants. What SQL cannot compute portably is computed in Python on ids only:
the holdout (a hash of the enrollment's identity: the held enrollments are
marked, and their rows written ``skipped`` / ``holdout`` by a ``CASE`` on that
mark) and A/B variants (``experiments.store_variants``, as after a row-by-row
enroll). The rows are the ones ``service.enroll`` writes, in the same order
(enrollment, then touchpoint), so even their ids match (tested).

A touchpoint that falls due more than ``FIXED_PLAN_AHEAD`` after the publish
gets no rows here: the touchpoint remembers when it falls due
(``Touchpoint.fan_out_at``) and the planner writes them shortly before
(``scheduler.flows.fan_out``), with the same statement, in chunks. Publishing
a class that starts next week writes its enrollments only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import product
from typing import Any

from sqlalchemy import Join, Select, case, literal, select, true, union_all, update
from sqlalchemy.ext.compiler import compiles
from sqlmodel import Session

from scheduler.outbox import service, set_checks
from scheduler.outbox.models import DeliveryStatus, EnrollmentStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.timing import due_at, get_zone
from sopbot.db import defer_wal_checkpoint, rowcount
from sopbot.sql import insert_of

# A fixed start's one-off touchpoint due later than this after publishing is
# written by the planner, this long before it falls due: long enough for a
# million rows to be written (about 30 s on PostgreSQL here) and for a planner
# tick or two to be missed.
FIXED_PLAN_AHEAD = timedelta(minutes=10)


@dataclass
class SetEnrollResult(service.EnrollResult):
    planned_later: int = 0  # touchpoints whose rows the planner writes (FIXED_PLAN_AHEAD)


def enroll_all(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    target_ids: Select[Any],
    anchor: datetime,
    now: datetime,
) -> SetEnrollResult:
    """Enroll every target ``target_ids`` selects (one column, the target id;
    targets already enrolled in this template left alone) into ``version``,
    all anchored at ``anchor``, and write their deliveries -- the rows
    ``service.enroll`` would write for the same targets, set-based."""
    if template.status not in (TemplateStatus.PUBLISHED, TemplateStatus.PAUSED):
        raise service.EnrollmentError(
            f"template {template.name!r} is {template.status}; only a published template enrolls"
        )
    spec = templates_service.version_spec(version)
    plans = service._plans(session, version)
    e = ENROLLMENTS.c
    sqlite = session.get_bind().dialect.name == "sqlite"
    targets = target_ids.subquery("targets")
    target_id = next(iter(targets.c))
    enrollments = select(
        literal(template.id),
        literal(version.id),
        literal(template.target_kind),
        target_id,
        literal(0),
        literal(anchor, e.anchor_at.type),
        literal(now, e.enrolled_at.type),
        literal(EnrollmentStatus.ACTIVE),
    ).order_by(target_id)  # enrollment ids in target order, as service.enroll gives them
    if sqlite:  # SQLite needs a WHERE on the SELECT of an upsert to parse ON CONFLICT
        enrollments = enrollments.where(true())
    return _write(session, template, version, spec, plans, enrollments, anchor, now)


def _write(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    spec: Any,
    plans: list[Any],
    enrollments: Select[Any],
    anchor: datetime,
    now: datetime,
) -> SetEnrollResult:
    zone = get_zone(spec.timezone)
    result = SetEnrollResult()
    one_offs: list[Any] = []
    later: list[tuple[Any, datetime]] = []  # (plan, the instant it falls due)
    for plan in plans:
        if plan.kind != "cron":
            due = due_at(plan.timing, anchor, zone)
            if due > now + FIXED_PLAN_AHEAD:
                later.append((plan, due))
            else:
                one_offs.append(plan)
    touchpoints = [p.touchpoint_id for p in plans]
    defer_wal_checkpoint(session)  # SQLite: the commit of a million rows does not copy them too
    with set_checks.checked_once(session, template.id, version.id, touchpoints):  # type: ignore[arg-type]
        held = _write_rows(
            session, template, version, spec, one_offs, enrollments, anchor, now, result
        )
    if result.enrolled and one_offs:
        for plan in one_offs:
            status, _, _ = _outcome(plan, anchor, zone, now)
            result.skipped += result.enrolled if status == DeliveryStatus.SKIPPED else len(held)
        experiments.store_variants(session, version, spec)
    for plan, due in later:  # the planner writes these (scheduler.flows.fan_out)
        session.execute(
            update(Touchpoint)
            .where(Touchpoint.id == plan.touchpoint_id)  # type: ignore[arg-type]
            .values(fan_out_at=due)
        )
    result.planned_later = len(later)
    # Cron occurrences already fanned out ahead of time must include newcomers.
    for plan in plans:
        if plan.kind == "cron":
            service._fan_out_planned_ahead(session, template, version, plan, spec, zone, now)
    return result


def _write_rows(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    spec: Any,
    one_offs: list[Any],
    enrollments: Select[Any],
    anchor: datetime,
    now: datetime,
    result: service.EnrollResult,
) -> set[int]:
    """The two ``INSERT ... SELECT`` statements (and the holdout's marks);
    counts into ``result``, returns the held enrollments."""
    e = ENROLLMENTS.c
    zone = get_zone(spec.timezone)
    sqlite = session.get_bind().dialect.name == "sqlite"
    fresh = (
        e.template_id == template.id,
        e.version_id == version.id,
        e.target_kind == template.target_kind,
        e.cycle == 0,
        e.enrolled_at == literal(now, e.enrolled_at.type),
        e.status == EnrollmentStatus.ACTIVE,
    )
    first = _first_rows(session, version.id, fresh)  # type: ignore[arg-type]
    result.enrolled = rowcount(
        session.execute(
            insert_of(session, ENROLLMENTS)
            .from_select(list(service._ENROLLMENT_COLUMNS), enrollments)
            .on_conflict_do_nothing()
        )
    )
    held: set[int] = set()
    if spec.holdout > 0:  # a hash per enrollment: computed on ids, marked in SQL
        rows = session.execute(select(e.id, e.target_id).where(*fresh)).all()
        held = experiments.held_enrollments(spec, template.id, template.target_kind, 0, rows)  # type: ignore[arg-type]
        experiments.mark_held(session, held)
    if result.enrolled and one_offs:
        result.deliveries = sum(
            _write_deliveries(
                session, spec, part, anchor, zone, now, fresh, bool(held), first, sqlite
            )
            for part in _parts(one_offs, anchor, zone, now, sqlite)
        )
    return held


def _parts(
    one_offs: list[Any], anchor: datetime, zone: Any, now: datetime, sqlite: bool
) -> list[list[tuple[int, Any]]]:
    """The touchpoints (with their positions) written by one statement each.

    SQLite: one statement per instant the rows run at. Each of the outbox's
    time indexes then gets its keys in one place, appended, instead of at every
    touchpoint's place at once (a page split in the middle for each): 1-3 s of
    CPU at 1,000,000 contacts. Rows that run at the same instant are still
    written enrollment by enrollment, each with its touchpoints in order, so
    the order they are claimed in is that of ``service.enroll``. PostgreSQL:
    one statement."""
    positioned = list(enumerate(one_offs))
    if not sqlite:
        return [positioned]
    by_instant: dict[datetime, list[tuple[int, Any]]] = defaultdict(list)
    for position, plan in positioned:
        by_instant[_outcome(plan, anchor, zone, now)[2]].append((position, plan))
    return [by_instant[instant] for instant in sorted(by_instant)]


def _write_deliveries(
    session: Session,
    spec: Any,
    part: list[tuple[int, Any]],
    anchor: datetime,
    zone: Any,
    now: datetime,
    fresh: tuple[Any, ...],
    held: bool,
    first: bool,
    sqlite: bool,
    *,
    as_of: datetime | None = None,
) -> int:
    """One ``INSERT ... SELECT``: the enrollments ``fresh`` selects crossed with
    these touchpoints' outcomes, decided once; ``held``: some of them are in
    the control group (``enrollments.holdout``), their rows written skipped.
    ``as_of``: decide the outcomes as of then (see :func:`_step`)."""
    e, d = ENROLLMENTS.c, DELIVERIES.c
    selects = [_step(plan, position, anchor, zone, now, as_of) for position, plan in part]
    steps = (selects[0] if len(selects) == 1 else union_all(*selects)).subquery("steps")
    is_held = e.holdout == true()
    skipped = literal(DeliveryStatus.SKIPPED)
    source = (
        select(
            e.id,
            steps.c.touchpoint_id,
            literal(0),
            e.template_id,
            e.version_id,
            e.target_kind,
            e.target_id,
            literal(spec.channel),
            steps.c.mode,
            steps.c.due_at,
            steps.c.run_at,
            steps.c.expires_at,
            case((is_held, skipped), else_=steps.c.status) if held else steps.c.status,
            case((is_held, literal(experiments.HOLDOUT_REASON)), else_=steps.c.reason)
            if held
            else steps.c.reason,
            literal(0),
            literal(now, d.created_at.type),
            case((is_held, literal(now, d.finished_at.type)), else_=steps.c.finished_at)
            if held
            else steps.c.finished_at,
        )
        .select_from(_CrossJoin(ENROLLMENTS, steps, true()))
        .where(*fresh)
    )
    if sqlite:  # the order service.enroll writes in, free with the loops above
        # With one touchpoint, ordering by its position too would still cost a
        # sort per enrollment ("temp b-tree for right part of ORDER BY"): about
        # a fifth of the statement.
        by_position = (steps.c.position,) if len(part) > 1 else ()
        source = source.order_by(e.id, *by_position)
    write = insert_of(session, DELIVERIES).from_select(list(service.DELIVERY_COLUMNS), source)
    if not first:  # some may exist: the key decides, as for a re-run
        write = write.on_conflict_do_nothing()
    return rowcount(session.execute(write))


def _first_rows(session: Session, version_id: int, fresh: tuple[Any, ...]) -> bool:
    """Whether the deliveries about to be written are certainly the first
    of their enrollments, so a plain ``INSERT`` can write them instead of one
    that first looks each key up (``ON CONFLICT DO NOTHING``: 15-25% of the
    deliveries' statement on both databases).

    They are when, before the enrollments' statement, no enrollment matches
    what the deliveries' statement selects, and no other transaction can add
    one before it runs: on SQLite the publish holds the only write lock from
    its first write to its commit; on PostgreSQL the version must be this
    transaction's own, unseen by any other (``set_checks``). Every enrollment
    the deliveries' statement then finds is one the enrollments' statement
    just wrote, and nothing wrote a delivery for it in between."""
    if session.get_bind().dialect.name != "sqlite" and not set_checks.version_written_here(
        session, version_id
    ):
        return False
    return session.execute(select(ENROLLMENTS.c.id).where(*fresh).limit(1)).first() is None


class _CrossJoin(Join):
    """``enrollments CROSS JOIN steps`` on SQLite, whose planner takes the
    left table as the outer loop only when told so: enrollments in id order,
    each with its few touchpoints, instead of the touchpoints outside and a
    sort of every row written (a plain join elsewhere)."""

    inherit_cache = True


@compiles(_CrossJoin, "sqlite")
def _cross_join_sqlite(element: _CrossJoin, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    linter = kw.get("from_linter")
    if linter is not None:  # joined on purpose: not a cartesian product by mistake
        linter.edges.update(product(element.left._from_objects, element.right._from_objects))
    left = compiler.process(element.left, **kw)
    right = compiler.process(element.right, **kw)
    return f"{left} CROSS JOIN {right}"


def _outcome(
    plan: Any, anchor: datetime, zone: Any, now: datetime
) -> tuple[str, str | None, datetime]:
    due = due_at(plan.timing, anchor, zone)
    return service._one_off_outcome(plan, due, now)


def _step(
    plan: Any,
    position: int,
    anchor: datetime,
    zone: Any,
    now: datetime,
    as_of: datetime | None = None,
) -> Select[Any]:
    """One touchpoint's constant columns: what ``service.enroll`` decides for a
    row anchored at ``anchor``, decided once.

    ``as_of``: the planner's rows, decided as of when they should have been
    written (``scheduler.flows.fan_out``): a planner that was not running when
    the touchpoint fell due writes them as they would have been, and those
    past their grace period missed, as a cron occurrence would be."""
    d = DELIVERIES.c
    due = due_at(plan.timing, anchor, zone)
    status, reason, run_at = service._one_off_outcome(plan, due, as_of or now)
    if as_of is not None and status == DeliveryStatus.SCHEDULED and run_at + plan.grace < now:
        status, reason = DeliveryStatus.MISSED, service.MISSED_WHILE_DOWN
    finished = now if status != DeliveryStatus.SCHEDULED else None
    return select(
        literal(plan.touchpoint_id, d.touchpoint_id.type).label("touchpoint_id"),
        literal(position, d.attempts.type).label("position"),
        literal(plan.mode, d.mode.type).label("mode"),
        literal(due, d.due_at.type).label("due_at"),
        literal(run_at, d.run_at.type).label("run_at"),
        literal(run_at + plan.grace, d.expires_at.type).label("expires_at"),
        literal(status, d.status.type).label("status"),
        literal(reason, d.reason.type).label("reason"),
        literal(finished, d.finished_at.type).label("finished_at"),
    )
