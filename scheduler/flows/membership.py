"""Audience reactions: SOPs that start and stop by themselves.

Audience changes (``audiences.changes``, the one unit of work every source
goes through) call :func:`react` with what a batch changed; this module decides
what that means for every published template bound to a segment, and is the
one place allowed to see both sides:

* **enroll** — who starts matching a template (``scheduler.flows.enrollment``);
* **exit** — a tag added or removed that the template lists, the target becoming
  inactive (contact deleted/blocked/unsubscribed, group dissolved), or it no
  longer matching the segment: the enrollment becomes ``exited`` and its pending
  deliveries ``cancelled`` with the reason. An exit may add tags (``exit.add_tags``);
  those go through the same path, so they trigger other SOPs (WeCom sends no
  callback for changes made through its API).
* **re-entry** — per template: ``never`` (default), ``after_finish`` (a target
  whose previous run ended may start again) or ``always`` (restart).

One template that cannot react (say its timing cannot be computed for this
target) fails alone, in its own savepoint, and is reported; the others go on.
Callers own the session (and so the transaction).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlmodel import Session, col

from audiences import changes
from audiences.applying import Applied
from audiences.changes import Reaction
from audiences.target_states import TargetKey, TargetState
from scheduler.flows import enrollment, exclusivity, fan_out
from scheduler.flows.enrollment import fixed_start
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from scheduler.outbox.repository import ENROLLMENTS, chunked
from sop_templates import service as templates_service
from sop_templates.models import TemplateVersion
from sop_templates.schemas import TemplateSpec
from sopbot.db import rowcount

log = logging.getLogger("sopbot.membership")

MAX_CASCADE = 5  # rounds of exit actions adding tags that trigger further exits
MembershipResult = Reaction  # what the SOPs did about a change

__all__ = ["MembershipResult", "fixed_start", "react"]


def react(session: Session, applied: Applied, now: datetime) -> Reaction:
    """Enroll and exit according to what a batch of events changed."""
    live, unreadable = enrollment.live_templates(session)
    result = Reaction(failures=unreadable)
    failed: set[int] = set()
    excludes = exclusivity.partners((item.template.id, item.spec.exclusive_with) for item in live)  # type: ignore[misc]
    for _round in range(MAX_CASCADE):
        exits = _exit_decisions(session, applied)
        exited = _exit(session, {eid: reason for eid, (reason, _, _) in exits.items()}, now)
        result.exited += exited.exited
        result.cancelled += exited.cancelled
        for item in live:
            if item.template.id not in failed:
                others = excludes.get(item.template.id, set())  # type: ignore[arg-type]
                result.add(_start(session, item, applied, now, failed, others))
        # exit actions: tags sopbot applies, which may trigger other templates
        follow_up: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        for _reason, key, tags in exits.values():
            if tags:
                follow_up[(key[0], tags)].append(key[1])
        if not follow_up:
            break
        merged = Applied()
        for (kind, tags), ids in follow_up.items():
            more = changes.tag_targets(session, kind, sorted(set(ids)), tags, now)
            merged.before.update({k: v for k, v in more.before.items() if k not in merged.before})
            merged.after.update(more.after)
        applied = merged
    return result


def _start(
    session: Session,
    live: enrollment.Live,
    applied: Applied,
    now: datetime,
    failed: set[int],
    excluded: set[int],
) -> Reaction:
    """Enroll who starts matching ``live``, in a savepoint: if this template
    cannot (its timing overflows the calendar, say), it is reported and the
    batch and the other templates go on."""
    try:
        with session.begin_nested():
            candidates = enrollment.starters(live, applied, now)
            if not candidates:
                return Reaction()
            return _enroll_with_reentry(session, live, candidates, now, excluded)
    except Exception as exc:  # poison: one template fails alone
        template_id: int = live.template.id  # type: ignore[assignment]
        failed.add(template_id)
        log.error("template %s (%s) could not enroll: %s", template_id, live.template.name, exc)
        return Reaction(
            failures=[
                {
                    "template_id": template_id,
                    "template": live.template.name,
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                }
            ]
        )


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
                    ENROLLMENTS.c.template_id,
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
    for row in enrollments:
        if row.version_id not in specs:
            continue
        key = (row.target_kind, row.target_id)
        reason = exit_reason(
            specs[row.version_id],
            applied.before[key],
            applied.after[key],
            template_id=row.template_id,
        )
        if reason:
            tags = tuple(specs[row.version_id].exit.add_tags)
            decisions[row.id] = (reason, key, tags)
    return decisions


def exit_reason(
    spec: TemplateSpec,
    before: TargetState | None,
    after: TargetState,
    *,
    template_id: int | None = None,
) -> str | None:
    """Why a target enrolled in ``spec`` (of ``template_id``) must leave after
    changing from ``before`` to ``after``, or None. Only changes count: a
    condition that already held before the batch was dealt with then; a click
    is the person's click on a tracked link of this template in the batch."""
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
    if rules.clicked:
        for click in after.clicked:
            if click.template_id == template_id and rules.exits_on_click(click.touchpoint_name):
                return f"exit condition: link clicked in {click.touchpoint_name!r}"
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
    """Specs by version id; one that cannot be read is left out (its enrollments
    keep running; ``live_templates`` reports it) rather than failing every exit."""
    out: dict[int, TemplateSpec] = {}
    for version in session.execute(
        select(TemplateVersion).where(col(TemplateVersion.id).in_(sorted(version_ids)))
    ).scalars():
        try:
            out[version.id] = templates_service.version_spec(version)  # type: ignore[index]
        except ValueError as exc:
            log.error("template version %s cannot be read: %s", version.id, exc)
    return out


def exit_enrollments(
    session: Session,
    reasons: dict[int, str],
    now: datetime,
    *,
    status: str = EnrollmentStatus.EXITED,
) -> Reaction:
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
) -> Reaction:
    result = Reaction()
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
            # a fixed start's rows being written for them now are cancelled too
            fan_out.wait_for_writers(
                session,
                select(col(Enrollment.version_id)).where(col(Enrollment.id).in_(list(chunk))),
            )
            result.cancelled += scheduler_service.cancel_pending(
                session, reason=reason, now=now, enrollment_ids=list(chunk)
            )
    return result


def _enroll_with_reentry(
    session: Session,
    live: enrollment.Live,
    candidates: dict[int, datetime],
    now: datetime,
    excluded: set[int],
) -> Reaction:
    spec = live.spec
    runs: dict[int, list[Any]] = defaultdict(list)
    for chunk in chunked(sorted(candidates)):
        for row in session.execute(
            select(
                ENROLLMENTS.c.id,
                ENROLLMENTS.c.target_id,
                ENROLLMENTS.c.cycle,
                ENROLLMENTS.c.status,
                ENROLLMENTS.c.version_id,
            ).where(
                ENROLLMENTS.c.template_id == live.template.id,
                ENROLLMENTS.c.target_kind == spec.target,
                ENROLLMENTS.c.target_id.in_(list(chunk)),
            )
        ).all():
            runs[row.target_id].append(row)
    unfinished = set()
    if spec.reentry == "after_finish":
        running = [r for rs in runs.values() for r in rs if r.status == EnrollmentStatus.ACTIVE]
        unfinished = _with_pending_deliveries(session, [r.id for r in running])
        # a touchpoint whose rows the planner has yet to write is pending too
        waiting = fan_out.versions_waiting(session, {r.version_id for r in running})
        unfinished.update(r.id for r in running if r.version_id in waiting)
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
    result = Reaction()
    if restart:
        ended = _exit(session, restart, now)
        result.exited += ended.exited
        result.cancelled += ended.cancelled
    if finished:
        _exit(session, finished, now, status=EnrollmentStatus.COMPLETED)
    for cycle, wanted in sorted(by_cycle.items()):
        # Mutually exclusive SOPs (scheduler.flows.exclusivity): a target already
        # in one of them is recorded skipped here, with the reason.
        pairs, taken = exclusivity.split(session, spec.target, wanted, excluded)
        result.excluded += exclusivity.record_skips(
            session, live.template, live.version, taken, now, cycle=cycle
        )
        for chunk in chunked(pairs, enrollment.ENROLL_CHUNK):
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
