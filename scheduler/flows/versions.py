"""Publishing a new version, and what happens to contacts mid-SOP.

Published versions are immutable (publishing itself is
``scheduler.flows.lifecycle.publish``). When a template is published again, targets
already enrolled either

* **keep** their version (the default): their pending deliveries go out as
  version N said, and new enrollments get version N+1; or
* **move** to the new version by touchpoint name: each pending delivery is
  re-pointed to the new version's touchpoint of the same name, its due time
  worked out again from the enrollment's anchor with the new timing (with the
  same rules enrollment applies: a time already past is skipped, quiet hours
  defer); a pending touchpoint whose name is gone is cancelled with the reason;
  a touchpoint new in this version is added, unless the target already had one
  of that name. Deliveries already claimed or sending finish on the old version.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlmodel import Session, col, select

from scheduler.flows import fan_out
from scheduler.outbox import service as scheduler_service
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus
from scheduler.outbox.repository import DELIVERIES, chunked, insert_ignore
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.models import TemplateVersion, Touchpoint
from sop_templates.timing import get_zone

Migration = Literal["keep", "move"]
MIGRATIONS: tuple[str, ...] = ("keep", "move")


@dataclass
class MoveResult:
    enrollments: int = 0  # enrollments now on the new version
    moved: int = 0  # pending deliveries re-pointed
    cancelled: int = 0  # pending deliveries whose touchpoint is gone
    added: int = 0  # deliveries for touchpoints new in this version
    skipped: int = 0  # of moved/added: recorded skipped (time already past)


def move_to_version(
    session: Session, template_id: int, version: TemplateVersion, now: datetime
) -> MoveResult:
    """Move active enrollments that are mid-SOP (pending deliveries, or a cron
    schedule) from older versions to ``version``, by touchpoint name."""
    result = MoveResult()
    template = templates_service.get_template(session, template_id)
    spec = templates_service.version_spec(version)
    zone = get_zone(spec.timezone)
    new_touchpoints = {tp.name: tp for tp in templates_service.touchpoints_of(session, version.id)}  # type: ignore[arg-type]
    plans = {p.touchpoint_id: p for p in scheduler_service._plans(session, version)}
    names = dict(
        session.execute(
            select(Touchpoint.id, Touchpoint.name).where(Touchpoint.template_id == template_id)  # type: ignore[call-overload]
        ).all()
    )
    enrollments = list(
        session.exec(
            select(Enrollment).where(
                Enrollment.template_id == template_id,
                Enrollment.status == EnrollmentStatus.ACTIVE,
                Enrollment.version_id != version.id,
            )
        ).all()
    )
    has_cron = any(tp.timing_kind == "cron" for tp in new_touchpoints.values())
    # mid-SOP too: a touchpoint of their version the planner has yet to write
    # (and rows of it being written now are among those moved)
    waiting = fan_out.versions_waiting(session, {e.version_id for e in enrollments})
    fan_out.wait_for_writers(session, sorted(waiting))
    for chunk in chunked(enrollments, 2000):
        by_id = {e.id: e for e in chunk}
        deliveries = list(
            session.exec(select(Delivery).where(col(Delivery.enrollment_id).in_(list(by_id)))).all()
        )
        seen: dict[int, set[str]] = defaultdict(set)  # enrollment → touchpoint names it has
        pending: dict[int, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            seen[d.enrollment_id].add(names.get(d.touchpoint_id, ""))
            if d.status == DeliveryStatus.SCHEDULED:
                pending[d.enrollment_id].append(d)
        movers = [
            e
            for e in chunk
            if pending.get(e.id) or has_cron or e.version_id in waiting  # type: ignore[arg-type]
        ]
        if not movers:
            continue
        # Due times exactly as enrolling into the new version would compute them.
        planned = {
            (row["enrollment_id"], row["touchpoint_id"]): row
            for row in scheduler_service._deliveries_for(
                movers,
                [p for p in plans.values() if p.kind != "cron"],
                template,
                version,
                spec.channel,
                zone,
                now,
            )
        }
        added: list[dict[str, object]] = []
        for enrollment in movers:
            for d in pending.get(enrollment.id, []):  # type: ignore[arg-type]
                name = names.get(d.touchpoint_id, "")
                target = new_touchpoints.get(name)
                values: dict[str, object]
                if target is None:
                    result.cancelled += transitions.cancel(
                        session,
                        reason=f"touchpoint {name!r} is not in version {version.version}",
                        now=now,
                        delivery_ids=[d.id],  # type: ignore[list-item]
                    )
                    continue
                values = {
                    "touchpoint_id": target.id,
                    "version_id": version.id,
                    "channel": spec.channel,
                    "mode": target.mode,
                }
                row = planned.get((enrollment.id, target.id))
                if row is not None:  # one-off: due again from the anchor
                    values.update(
                        {k: row[k] for k in ("due_at", "run_at", "expires_at", "status", "reason")}
                    )
                    values["finished_at"] = row["finished_at"]
                    if row["status"] == DeliveryStatus.SKIPPED:
                        result.skipped += 1
                result.moved += transitions.repoint(session, d.id, values)  # type: ignore[arg-type]
            for name, target in new_touchpoints.items():
                row = planned.get((enrollment.id, target.id))
                if row is not None and name not in seen[enrollment.id]:  # type: ignore[index]
                    if enrollment.holdout:  # the control group stays held out
                        row.update(experiments.held_row(now))
                    added.append(row)
                    result.skipped += row["status"] == DeliveryStatus.SKIPPED
            enrollment.version_id = version.id  # type: ignore[assignment]
            session.add(enrollment)
            result.enrollments += 1
        insert_ignore(session, DELIVERIES, added)  # type: ignore[arg-type]
        experiments.store_variants(
            session,
            version,
            spec,
            enrollment_ids=[e.id for e in movers],  # type: ignore[misc]
        )
        result.added += len(added)
    session.flush()
    return result
