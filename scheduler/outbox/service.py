"""Enrollment and cron fan-out: turning published versions into deliveries.

Both paths write deliveries in bulk with ``INSERT ... ON CONFLICT DO NOTHING`` on
the (enrollment, touchpoint, occurrence) key, so repeating them is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import Insert, func, literal, select, update
from sqlmodel import Session, col

from scheduler.outbox import policies, transitions
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from scheduler.outbox.repository import (
    DELIVERIES,
    ENROLLMENTS,
    among,
    chunked,
    insert_rows,
    instant_param,
    memoized,
)
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.schemas import TouchpointSpec
from sop_templates.timing import CronTiming, as_instant, cron_occurrences, due_at, get_zone
from sopbot.db import rowcount


class EnrollmentError(ValueError):
    """An enrollment request that cannot be carried out; the message says why."""


# A fan-out (a cron occurrence, a fixed start's touchpoint) written after it
# passed its grace period: nothing ran the planner in time.
MISSED_WHILE_DOWN = "occurrence passed while no scheduler was running"


@dataclass
class EnrollResult:
    enrolled: int = 0  # new enrollments
    already: int = 0  # targets that were enrolled before (no-op)
    deliveries: int = 0  # delivery rows written
    skipped: int = 0  # of which recorded as skipped (time already past)


@dataclass(frozen=True)
class _Plan:
    touchpoint_id: int
    timing: Any
    kind: str
    grace: timedelta
    past_policy: str
    mode: str
    # The template's own quiet hours and zone, applied as due times are computed
    # (workspace defaults are applied at dispatch, where settings are known).
    quiet: policies.QuietHours | None = None
    zone: Any = None


def _plans(session: Session, version: TemplateVersion) -> list[_Plan]:
    plans = []
    template_spec = templates_service.version_spec(version)
    quiet, zone = policies.quiet_hours_of(template_spec), get_zone(template_spec.timezone)
    for tp in templates_service.touchpoints_of(session, version.id):  # type: ignore[arg-type]
        spec = TouchpointSpec.model_validate(
            {"name": tp.name, "timing": tp.timing, "content": tp.content}
        )
        plans.append(
            _Plan(
                touchpoint_id=tp.id,  # type: ignore[arg-type]
                timing=spec.timing,
                kind=tp.timing_kind,
                grace=timedelta(seconds=tp.grace_seconds),
                past_policy=tp.past_policy,
                mode=tp.mode,
                quiet=quiet,
                zone=zone,
            )
        )
    return plans


def enroll(
    session: Session,
    template: SopTemplate,
    targets: Sequence[tuple[int, datetime]],
    now: datetime,
    *,
    cycle: int = 0,
    version: TemplateVersion | None = None,
) -> EnrollResult:
    """Enroll ``targets`` — ``(target id, anchor instant)`` pairs — into the
    template's live version and write their deliveries.

    A target already enrolled in this template (same cycle) is left as it is.
    One-off touchpoints get their due time now; a day/at time already past is
    skipped with a reason (or sent, if the touchpoint says so); an offset already
    past its grace period is skipped too. Cron touchpoints are fanned out by
    ``plan_cron`` occurrence by occurrence.
    """
    if template.status not in (TemplateStatus.PUBLISHED, TemplateStatus.PAUSED):
        raise EnrollmentError(
            f"template {template.name!r} is {template.status}; only a published template enrolls"
        )
    version = version or templates_service.current_version(session, template)
    spec = templates_service.version_spec(version)
    zone = get_zone(spec.timezone)
    plans = _plans(session, version)
    result = EnrollResult()
    unique: dict[int, datetime] = {}
    for target_id, anchor in targets:  # an anchor without a UTC offset is template time
        unique.setdefault(int(target_id), anchor if anchor.tzinfo else as_instant(anchor, zone))
    ids = list(unique)
    instant, active = memoized(instant_param(session)), EnrollmentStatus.ACTIVE
    sqlite = session.get_bind().dialect.name == "sqlite"
    key = (
        ENROLLMENTS.c.template_id == template.id,
        ENROLLMENTS.c.target_kind == template.target_kind,
        ENROLLMENTS.c.cycle == cycle,
    )
    head = (template.id, version.id, template.target_kind)
    for chunk in chunked(ids):
        in_chunk = among(ENROLLMENTS.c.target_id, chunk, session)
        existing = set(
            session.execute(select(ENROLLMENTS.c.target_id).where(*key, in_chunk)).scalars()
        )
        new_ids = [t for t in chunk if t not in existing]
        result.already += len(existing)
        if not new_ids:
            continue
        enrolled_at = instant(now)
        insert_rows(
            session,
            ENROLLMENTS,
            _ENROLLMENT_COLUMNS,
            [
                (*head, target_id, cycle, instant(unique[target_id]), enrolled_at, active)
                for target_id in new_ids
            ],
        )
        in_new = among(ENROLLMENTS.c.target_id, new_ids, session)
        fresh: list[tuple[int, int, datetime]]
        if sqlite:  # written under BEGIN IMMEDIATE: the anchors are the ones just given
            fresh = [
                (enrollment_id, target_id, unique[target_id])
                for enrollment_id, target_id in session.execute(
                    select(ENROLLMENTS.c.id, ENROLLMENTS.c.target_id).where(*key, in_new)
                ).all()
            ]
        else:  # a concurrent enroll may have won a row: take its anchor
            fresh = [
                tuple(row)  # type: ignore[misc]
                for row in session.execute(
                    select(
                        ENROLLMENTS.c.id, ENROLLMENTS.c.target_id, ENROLLMENTS.c.anchor_at
                    ).where(*key, in_new)
                )
            ]
        result.enrolled += len(fresh)
        outbox = _delivery_rows(fresh, plans, template, version, spec.channel, zone, now, instant)
        held = experiments.held_enrollments(spec, template.id, template.target_kind, cycle, fresh)  # type: ignore[arg-type]
        if held:  # the control group: enrolled, its deliveries written skipped
            outbox = experiments.hold_out(outbox, DELIVERY_COLUMNS, held, instant(now))
            experiments.mark_held(session, held)
        result.deliveries += len(outbox)
        result.skipped += sum(1 for row in outbox if row[_STATUS] == DeliveryStatus.SKIPPED)
        # In due order, the outbox's time indexes grow at a few points instead of
        # taking every row at a random place: fewer B-tree pages touched. (With one
        # shared anchor -- a fixed start -- they already do, and the key's order
        # is better left alone.)
        if len({anchor for _, _, anchor in fresh}) > 1:
            outbox.sort(key=_run_at_key)
        insert_rows(session, DELIVERIES, DELIVERY_COLUMNS, outbox)
        experiments.store_variants(session, version, spec, enrollment_ids=[f[0] for f in fresh])
    # Cron occurrences already fanned out ahead of time must include newcomers.
    for plan in plans:
        if plan.kind == "cron":
            _fan_out_planned_ahead(session, template, version, plan, spec, zone, now)
    return result


_ENROLLMENT_COLUMNS = (
    "template_id",
    "version_id",
    "target_kind",
    "target_id",
    "cycle",
    "anchor_at",
    "enrolled_at",
    "status",
)
DELIVERY_COLUMNS = (
    "enrollment_id",
    "touchpoint_id",
    "occurrence",
    "template_id",
    "version_id",
    "target_kind",
    "target_id",
    "channel",
    "mode",
    "due_at",
    "run_at",
    "expires_at",
    "status",
    "reason",
    "attempts",
    "created_at",
    "finished_at",
)
_STATUS = DELIVERY_COLUMNS.index("status")
_run_at_key = itemgetter(DELIVERY_COLUMNS.index("run_at"))


def _delivery_rows(
    enrollments: Sequence[Any],
    plans: Sequence[_Plan],
    template: SopTemplate,
    version: TemplateVersion,
    channel: str,
    zone: Any,
    now: datetime,
    instant: Callable[[datetime], Any] = lambda value: value,
) -> list[tuple[Any, ...]]:
    """The one-off deliveries of ``enrollments`` (``(id, target_id, anchor_at)``
    tuples) as tuples in ``DELIVERY_COLUMNS`` order, instants passed
    through ``instant`` (see ``repository.instant_param``).

    This is the inner loop of a bulk enroll (a million rows for a large segment):
    due times, outcomes and instant conversions are worked out once per
    distinct anchor; a row costs one tuple.
    """
    head = (template.id, version.id, template.target_kind)
    created = instant(now)
    scheduled = DeliveryStatus.SCHEDULED
    one_offs = [p for p in plans if p.kind != "cron"]
    # A row is (enrollment id, the touchpoint's columns, target id, the columns
    # its anchor decides). Enrollments share anchors (everyone added in the same
    # second; a fixed start), so those are worked out once per anchor.
    fronts = [(p.touchpoint_id, 0, *head) for p in one_offs]

    def ends(anchor: datetime) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for plan in one_offs:
            if plan.kind == "offset":
                due = anchor + plan.timing.delta
            else:
                due = due_at(plan.timing, anchor, zone)
            if plan.quiet is None and due >= now:
                at = instant(due)
                out.append(
                    (channel, plan.mode, at, at, instant(due + plan.grace), scheduled, None, 0)
                    + (created, None)
                )
                continue
            status, reason, run_at = _one_off_outcome(plan, due, now)
            out.append(
                (channel, plan.mode, instant(due), instant(run_at), instant(run_at + plan.grace))
                + (status, reason, 0, created, created if status != scheduled else None)
            )
        return out

    rows: list[tuple[Any, ...]] = []
    append = rows.append
    by_anchor: dict[datetime, list[tuple[tuple[Any, ...], tuple[Any, ...]]]] = {}
    for enrollment_id, target_id, anchor in enrollments:
        parts = by_anchor.get(anchor)
        if parts is None:
            parts = by_anchor[anchor] = list(zip(fronts, ends(anchor), strict=True))
        for front, end in parts:
            append((enrollment_id, *front, target_id, *end))
    return rows


def _one_off_outcome(plan: _Plan, due: datetime, now: datetime) -> tuple[str, str | None, datetime]:
    """(status, reason, run_at) of a one-off touchpoint due at ``due``, enrolled at ``now``."""
    status, reason = DeliveryStatus.SCHEDULED, None
    if due < now:
        late_ok = plan.kind == "offset" or plan.past_policy == "send"
        if not late_ok:
            status, reason = DeliveryStatus.SKIPPED, "time already past when enrolled"
        elif due + plan.grace < now:
            status, reason = DeliveryStatus.SKIPPED, "already past its grace period when enrolled"
    run_at = due
    if plan.quiet is not None and status == DeliveryStatus.SCHEDULED:
        decision = plan.quiet.decide(max(due, now), plan.zone)
        if decision.action == "skip":
            status, reason = DeliveryStatus.SKIPPED, decision.reason
        elif decision.action == "defer":
            assert decision.until is not None  # a deferral always says until when
            run_at, reason = decision.until, decision.reason
    return status, reason, run_at


def _deliveries_for(
    enrollments: Sequence[Any],
    plans: Sequence[_Plan],
    template: SopTemplate,
    version: TemplateVersion,
    channel: str,
    zone: Any,
    now: datetime,
) -> list[dict[str, Any]]:
    """:func:`_delivery_rows` of enrollment objects as dicts (column → value), for
    callers that edit them."""
    triples = [(e.id, e.target_id, e.anchor_at) for e in enrollments]
    return [
        dict(zip(DELIVERY_COLUMNS, row, strict=True))
        for row in _delivery_rows(triples, plans, template, version, channel, zone, now)
    ]


def _fan_out_planned_ahead(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    plan: _Plan,
    spec: Any,
    zone: Any,
    now: datetime,
) -> None:
    touchpoint = session.get(Touchpoint, plan.touchpoint_id)
    if touchpoint is None or touchpoint.planned_until is None or touchpoint.planned_until <= now:
        return
    for occurrence in cron_occurrences(plan.timing, zone, now, touchpoint.planned_until):
        _fan_out_occurrence(session, template, version, plan, spec.channel, occurrence, now)


def _fan_out_occurrence(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    plan: _Plan,
    channel: str,
    occurrence: datetime,
    now: datetime,
) -> int:
    """One cron occurrence → one delivery per active enrollment, in one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``."""
    expires = occurrence + plan.grace
    missed = expires < now
    status = DeliveryStatus.MISSED if missed else DeliveryStatus.SCHEDULED
    reason = MISSED_WHILE_DOWN if missed else None
    run_at = occurrence
    if not missed and plan.quiet is not None:
        decision = plan.quiet.decide(max(occurrence, now), plan.zone)
        if decision.action == "skip":
            status, reason = DeliveryStatus.SKIPPED, decision.reason
        elif decision.action == "defer" and decision.until is not None:
            run_at, reason = decision.until, decision.reason
            expires = run_at + plan.grace
    source = select(
        ENROLLMENTS.c.id,
        literal(plan.touchpoint_id),
        literal(int(occurrence.timestamp())),
        ENROLLMENTS.c.template_id,
        ENROLLMENTS.c.version_id,
        ENROLLMENTS.c.target_kind,
        ENROLLMENTS.c.target_id,
        literal(channel),
        literal(plan.mode),
        literal(occurrence, DELIVERIES.c.due_at.type),
        literal(run_at, DELIVERIES.c.run_at.type),
        literal(expires, DELIVERIES.c.expires_at.type),
        *experiments.holdout_columns(status, reason, now),
    ).where(
        ENROLLMENTS.c.version_id == version.id,
        ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE,
        ENROLLMENTS.c.enrolled_at <= occurrence,
    )
    columns = list(DELIVERY_COLUMNS)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Insert = pg_insert(DELIVERIES).from_select(columns, source).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        # SQLite needs a WHERE on the SELECT of an upsert to parse ON CONFLICT.
        stmt = sqlite_insert(DELIVERIES).from_select(columns, source.where(literal(1) == 1))
        stmt = stmt.on_conflict_do_nothing()
    return rowcount(session.execute(stmt))


@dataclass
class PlanResult:
    occurrences: int = 0
    deliveries: int = 0
    missed: int = 0


def plan_cron(
    session: Session, now: datetime, *, lookahead: timedelta, catch_up: timedelta
) -> PlanResult:
    """Fan out every cron touchpoint's occurrences up to ``now + lookahead``.

    Each touchpoint remembers how far it has been planned (``planned_until``), so
    after downtime the occurrences that passed are written as ``missed`` (at most
    ``catch_up`` back) instead of being sent late or forgotten.
    """
    result = PlanResult()
    until = now + lookahead
    rows = session.exec(
        select(Touchpoint, TemplateVersion, SopTemplate)  # type: ignore[call-overload]
        .join(TemplateVersion, col(TemplateVersion.id) == Touchpoint.version_id)
        .join(SopTemplate, col(SopTemplate.id) == Touchpoint.template_id)
        .where(
            col(Touchpoint.timing_kind) == "cron",
            col(SopTemplate.status).in_([TemplateStatus.PUBLISHED, TemplateStatus.PAUSED]),
        )
    ).all()
    for touchpoint, version, template in rows:
        spec = templates_service.version_spec(version)
        zone = get_zone(spec.timezone)
        timing = CronTiming.model_validate(touchpoint.timing)
        start = max(touchpoint.planned_until or now, now - catch_up)
        if start >= until:
            continue
        if session.get_bind().dialect.name == "postgresql":
            # Held until this commits: an exit meanwhile waits for it, then
            # cancels the rows written here (scheduler.flows.fan_out.wait_for_writers).
            session.execute(
                select(Touchpoint.id)  # type: ignore[call-overload]
                .where(col(Touchpoint.id) == touchpoint.id)
                .with_for_update()
            )
        plan = _Plan(
            touchpoint_id=touchpoint.id,
            timing=timing,
            kind="cron",
            grace=timedelta(seconds=touchpoint.grace_seconds),
            past_policy=touchpoint.past_policy,
            mode=touchpoint.mode,
            quiet=policies.quiet_hours_of(spec),
            zone=zone,
        )
        for occurrence in cron_occurrences(timing, zone, start, until):
            written = _fan_out_occurrence(
                session, template, version, plan, spec.channel, occurrence, now
            )
            if written:
                experiments.store_variants(
                    session, version, spec, occurrence=int(occurrence.timestamp())
                )
            result.occurrences += 1
            result.deliveries += written
            if occurrence + plan.grace < now:
                result.missed += written
        # Monotonic even when two workers plan at once.
        session.execute(
            update(Touchpoint)
            .where(
                col(Touchpoint.id) == touchpoint.id,
                (col(Touchpoint.planned_until).is_(None)) | (col(Touchpoint.planned_until) < until),
            )
            .values(planned_until=until)
        )
    return result


def cancel_pending(
    session: Session,
    *,
    reason: str,
    now: datetime,
    template_id: int | None = None,
    enrollment_ids: Sequence[int] | None = None,
) -> int:
    """Cancel deliveries that have not started sending (scheduled or claimed)."""
    return transitions.cancel(
        session, reason=reason, now=now, template_id=template_id, enrollment_ids=enrollment_ids
    )


def archive_template(session: Session, template_id: int, now: datetime) -> int:
    """Archive a template: cancel its pending deliveries and end its enrollments."""
    templates_service.set_status(session, template_id, TemplateStatus.ARCHIVED, now)
    # Nothing is left for the planner to write (scheduler.flows.fan_out). First:
    # on PostgreSQL this waits for a chunk being written, so it is cancelled too.
    session.execute(
        update(Touchpoint)
        .where(col(Touchpoint.template_id) == template_id, col(Touchpoint.fan_out_at).is_not(None))
        .values(fan_out_at=None)
    )
    count = cancel_pending(session, reason="template archived", now=now, template_id=template_id)
    session.execute(
        update(Enrollment)
        .where(
            col(Enrollment.template_id) == template_id,
            col(Enrollment.status) == EnrollmentStatus.ACTIVE,
        )
        .values(status=EnrollmentStatus.CANCELLED, exited_at=now, exit_reason="template archived")
    )
    return count


def held_template_ids(session: Session) -> list[int]:
    """Templates whose deliveries must not go out right now (paused)."""
    return list(
        session.execute(
            select(SopTemplate.id).where(col(SopTemplate.status) == TemplateStatus.PAUSED)  # type: ignore[call-overload]
        ).scalars()
    )


def delivery_counts(session: Session, template_id: int | None = None) -> dict[str, int]:
    stmt = select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
    if template_id is not None:
        stmt = stmt.where(col(Delivery.template_id) == template_id)
    return {status: n for status, n in session.execute(stmt).all()}
