"""A fixed start's deliveries, written shortly before they fall due.

Publishing a fixed-start SOP writes the deliveries of the touchpoints due
within ``set_enroll.FIXED_PLAN_AHEAD``; each later one-off touchpoint keeps the
instant it falls due in ``Touchpoint.fan_out_at``. Everyone enrolled from the
fixed start has that touchpoint at that same instant, so it is one occurrence
for all of them, like a cron occurrence: this planner writes its rows
``FIXED_PLAN_AHEAD`` before it, for every enrollment still active then, with
the statement publishing uses (``set_enroll``), and clears the mark.

It writes them in chunks of enrollments, one transaction each, so a million
rows never hold SQLite's write lock for long, and uses ``ON CONFLICT DO
NOTHING``: rows that exist are kept (a target enrolled after the publish got
its rows when it enrolled; a chunk written before a crash is not written
twice). The mark is cleared in the transaction of the last chunk, so a crash
midway leaves it for the next tick.

On PostgreSQL a chunk holds its touchpoint's row (``FOR UPDATE``) until it
commits, and whatever ends or moves enrollments waits for it
(:func:`wait_for_writers`, ``FOR SHARE``) before it cancels or re-points their
rows: an exit that lands while a chunk is being written then cancels that
chunk's row too, instead of missing a row it could not see yet. (SQLite's
writers take turns, so the question does not arise there.)

A planner that was not running when the touchpoint fell due writes its rows
late, as they would have been written in time: sent late within the
touchpoint's grace period, ``missed`` after it (as a cron occurrence), never
silently nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from scheduler.flows.enrollment import fixed_start
from scheduler.outbox import service as scheduler_service
from scheduler.outbox import set_enroll
from scheduler.outbox.models import EnrollmentStatus
from scheduler.outbox.recording import is_outage
from scheduler.outbox.repository import ENROLLMENTS
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateStatus, TemplateVersion, Touchpoint
from sop_templates.timing import get_zone

log = logging.getLogger("sopbot.scheduler.fan_out")

CHUNK = 50_000  # enrollments per transaction
AHEAD_MINUTES = int(set_enroll.FIXED_PLAN_AHEAD.total_seconds() // 60)  # as operators read it


@dataclass
class FanOutResult:
    touchpoints: int = 0  # whose rows are now all written
    deliveries: int = 0  # rows written
    failed: int = 0  # touchpoints that could not be written (logged; tried again next tick)


def enrolled_from_start(version: TemplateVersion, spec: Any) -> tuple[Any, ...]:
    """Conditions on ``enrollments`` selecting whom a waiting touchpoint of
    ``version`` goes to: its active enrollments anchored at the fixed start."""
    e = ENROLLMENTS.c
    return (
        e.version_id == version.id,
        e.status == EnrollmentStatus.ACTIVE,
        e.anchor_at == fixed_start(spec),
    )


def _plan_of(session: Session, version: TemplateVersion, touchpoint_id: int) -> Any:
    return next(
        p for p in scheduler_service._plans(session, version) if p.touchpoint_id == touchpoint_id
    )


def versions_waiting(session: Session, version_ids: set[int]) -> set[int]:
    """Those of ``version_ids`` with a touchpoint whose rows are not written
    yet: their enrollments are not finished, whatever their rows say."""
    if not version_ids:
        return set()
    return set(
        session.execute(
            select(Touchpoint.version_id).where(  # type: ignore[call-overload]
                col(Touchpoint.version_id).in_(sorted(version_ids)),
                col(Touchpoint.fan_out_at).is_not(None),
            )
        ).scalars()
    )


def due_fan_outs(session: Session, now: datetime) -> list[int]:
    """Ids of the touchpoints whose rows are due to be written at ``now``
    (their template live or paused; an archived one's never are)."""
    return list(
        session.execute(
            select(Touchpoint.id)  # type: ignore[call-overload]
            .join(SopTemplate, col(SopTemplate.id) == Touchpoint.template_id)
            .where(
                col(Touchpoint.fan_out_at).is_not(None),
                col(Touchpoint.fan_out_at) <= now + set_enroll.FIXED_PLAN_AHEAD,
                col(SopTemplate.status).in_([TemplateStatus.PUBLISHED, TemplateStatus.PAUSED]),
            )
            .order_by(Touchpoint.fan_out_at, Touchpoint.id)
        ).scalars()
    )


def fan_out(
    session: Session, touchpoint_id: int, now: datetime, *, chunk: int = CHUNK, commit: bool = True
) -> int:
    """Write one touchpoint's rows, ``chunk`` enrollments per transaction
    (``session`` is committed after each, unless ``commit`` is off); returns
    how many were written. A touchpoint written meanwhile, or being written by
    another worker (PostgreSQL: its row locked), is left to it."""
    row = session.execute(
        select(Touchpoint, TemplateVersion, SopTemplate)  # type: ignore[call-overload]
        .join(TemplateVersion, col(TemplateVersion.id) == Touchpoint.version_id)
        .join(SopTemplate, col(SopTemplate.id) == Touchpoint.template_id)
        .where(col(Touchpoint.id) == touchpoint_id, col(Touchpoint.fan_out_at).is_not(None))
    ).first()
    if row is None:
        return 0
    touchpoint, version, template = row
    due = touchpoint.fan_out_at
    spec = templates_service.version_spec(version)
    plan = _plan_of(session, version, touchpoint_id)
    anchor, zone = fixed_start(spec), get_zone(spec.timezone)
    e = ENROLLMENTS.c
    sqlite = session.get_bind().dialect.name == "sqlite"
    enrolled = enrolled_from_start(version, spec)
    variants = touchpoint.name in {t.name for t in spec.touchpoints if t.variants}
    low, high = session.execute(select(func.min(e.id), func.max(e.id)).where(*enrolled)).one()
    written = 0
    start = low
    while start is not None and start <= high:
        if not _hold(session, touchpoint_id, first=start == low):
            return written
        end = start + chunk
        part = (*enrolled, e.id >= start, e.id < end)
        written += set_enroll._write_deliveries(
            session,
            spec,
            [(0, plan)],
            anchor,
            zone,
            now,
            part,
            spec.holdout > 0,
            False,
            sqlite,
            as_of=min(now, due),
        )
        if variants:
            ids = list(session.execute(select(e.id).where(*part)).scalars())
            experiments.store_variants(session, version, spec, enrollment_ids=ids)
        if end > high:
            break
        if commit:
            session.commit()
        start = end
    if not _hold(session, touchpoint_id, first=low is None):
        return written
    session.execute(
        update(Touchpoint)
        .where(col(Touchpoint.id) == touchpoint_id, col(Touchpoint.fan_out_at).is_not(None))
        .values(fan_out_at=None)
    )
    if commit:
        session.commit()
    log.info(
        "wrote %s deliveries of touchpoint %s (%s), due %s",
        written,
        touchpoint_id,
        template.name,
        due,
    )
    return written


def _hold(session: Session, touchpoint_id: int, *, first: bool) -> bool:
    """Whether the touchpoint still waits for its rows, held for this
    transaction. On PostgreSQL its row is locked: before the first chunk with
    ``SKIP LOCKED`` (a worker already writing it keeps it, the others move
    on), before the next ones waiting for whatever holds it (an exit or a move
    in :func:`wait_for_writers`). SQLite's writers take turns anyway."""
    query = select(Touchpoint.id).where(  # type: ignore[call-overload]
        col(Touchpoint.id) == touchpoint_id, col(Touchpoint.fan_out_at).is_not(None)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=first)
    return session.execute(query).first() is not None


def wait_for_writers(session: Session, version_ids: Any) -> None:
    """Before cancelling or re-pointing the rows of enrollments of
    ``version_ids`` (ids, or a query selecting them): on PostgreSQL, wait for
    a chunk being written for them (or a cron occurrence being fanned out) to
    commit, and keep the next one from starting until this transaction ends
    (see the module's docstring). A statement run after this sees its rows."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        select(Touchpoint.id)  # type: ignore[call-overload]
        .where(
            col(Touchpoint.version_id).in_(version_ids),
            # a cron occurrence being fanned out holds its touchpoint too (service.plan_cron)
            (col(Touchpoint.fan_out_at).is_not(None)) | (col(Touchpoint.timing_kind) == "cron"),
        )
        .with_for_update(read=True)
    ).all()


def plan_each_when_due(session: Session) -> int:
    """Run :func:`plan_fixed` as each waiting touchpoint comes due, as the
    planner's ticks would while time passes (benchmarks and tests compare a
    publish with everything it leads to); the rows written."""
    written = 0
    while (
        due := session.execute(select(func.min(Touchpoint.fan_out_at))).scalar_one()
    ) is not None:
        written += plan_fixed(session, due - set_enroll.FIXED_PLAN_AHEAD).deliveries
    return written


def waiting(session: Session, template_id: int) -> int:
    """How many deliveries of ``template_id`` the planner has yet to write:
    per touchpoint waiting, the enrollments it will write them for now."""
    total = 0
    per_version = session.execute(
        select(Touchpoint.version_id, func.count())  # type: ignore[call-overload]
        .where(col(Touchpoint.template_id) == template_id, col(Touchpoint.fan_out_at).is_not(None))
        .group_by(Touchpoint.version_id)
    ).all()
    for version_id, touchpoints in per_version:
        version = session.get(TemplateVersion, version_id)
        if version is None:
            continue
        spec = templates_service.version_spec(version)
        enrolled = session.execute(
            select(func.count()).where(*enrolled_from_start(version, spec))
        ).scalar_one()
        total += touchpoints * enrolled
    return total


def waiting_sends(session: Session, kind: str, before: datetime) -> list[tuple[datetime, set[int]]]:
    """When the rows the planner has yet to write go out (the touchpoints of
    live and paused SOPs to ``kind`` targets, falling due before ``before``):
    per touchpoint, its run time as the planner will write it (the template's
    quiet hours applied) and the ids of the targets it goes to."""
    out: list[tuple[datetime, set[int]]] = []
    enrolled: dict[int, set[int]] = {}  # version → its targets (one read for its touchpoints)
    for touchpoint_id in due_fan_outs(session, before - set_enroll.FIXED_PLAN_AHEAD):
        touchpoint = session.get(Touchpoint, touchpoint_id)
        version = session.get(TemplateVersion, touchpoint.version_id) if touchpoint else None
        if touchpoint is None or version is None or touchpoint.fan_out_at is None:
            continue
        spec = templates_service.version_spec(version)
        if spec.target != kind:
            continue
        due = touchpoint.fan_out_at
        _, _, run_at = scheduler_service._one_off_outcome(
            _plan_of(session, version, touchpoint_id), due, due
        )
        if version.id not in enrolled:
            enrolled[version.id] = set(  # type: ignore[index]
                session.execute(
                    select(ENROLLMENTS.c.target_id).where(*enrolled_from_start(version, spec))
                ).scalars()
            )
        out.append((run_at, enrolled[version.id]))  # type: ignore[index]
    return out


def plan_fixed(session: Session, now: datetime, *, chunk: int = CHUNK) -> FanOutResult:
    """Write every touchpoint's rows that are due to be written at ``now``.
    One that cannot be written fails alone: logged with its reason, tried
    again next tick, the others written meanwhile. A database outage stops
    the tick (the next one goes on from where the chunks got)."""
    result = FanOutResult()
    for touchpoint_id in due_fan_outs(session, now):
        try:
            result.deliveries += fan_out(session, touchpoint_id, now, chunk=chunk)
            result.touchpoints += 1
        except Exception as exc:
            if is_outage(exc):
                raise
            session.rollback()
            result.failed += 1
            log.exception(
                "could not write the deliveries of touchpoint %s; the others go on",
                touchpoint_id,
                extra={"touchpoint_id": touchpoint_id},
            )
    return result
