"""Mutually exclusive SOPs (互斥): a target in one of them is not enrolled in
the other.

A template lists the SOPs it excludes in ``exclusive_with`` (the one-click
"此 SOP 中的客户不再进入 …" where an overlap is flagged). Exclusion works both
ways, whichever of the two lists the other: three live new-friend SOPs that
exclude each other welcome a new friend once — the first to enroll it (the
oldest template) wins. The others record the target as ``skipped`` with the
reason, and write no delivery. Enrollment (publish and audience reactions)
asks here; the publish impact and the forecast count the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session

from scheduler.outbox.models import EnrollmentStatus
from scheduler.outbox.repository import ENROLLMENTS, chunked
from sop_templates.models import SopTemplate, TemplateVersion
from sopbot.sql import insert_of

REASON = "exclusive: already in SOP #{id}"


def partners(declared: Iterable[tuple[int, Collection[int]]]) -> dict[int, set[int]]:
    """``{template id: ids it excludes}`` from every ``(template id,
    exclusive_with)`` declaration, made mutual."""
    out: dict[int, set[int]] = defaultdict(set)
    for template_id, others in declared:
        for other in others:
            if other != template_id:
                out[template_id].add(other)
                out[other].add(template_id)
    return out


def already_in(
    session: Session, target_kind: str, target_ids: Sequence[int], template_ids: Collection[int]
) -> dict[int, int]:
    """``{target id: template id}`` of the targets actively enrolled in one of
    ``template_ids`` (the lowest such template id)."""
    found: dict[int, int] = {}
    if not template_ids or not target_ids:
        return found
    for chunk in chunked(sorted(set(target_ids))):
        for target_id, template_id in session.execute(
            select(ENROLLMENTS.c.target_id, ENROLLMENTS.c.template_id)
            .where(
                ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE,
                ENROLLMENTS.c.target_kind == target_kind,
                ENROLLMENTS.c.template_id.in_(sorted(template_ids)),
                ENROLLMENTS.c.target_id.in_(list(chunk)),
            )
            .order_by(ENROLLMENTS.c.template_id)
        ).all():
            found.setdefault(target_id, template_id)
    return found


def split(
    session: Session,
    target_kind: str,
    pairs: Sequence[tuple[int, datetime]],
    excluded_templates: Collection[int],
) -> tuple[list[tuple[int, datetime]], dict[int, int]]:
    """The ``(target, anchor)`` pairs that may enroll, and ``{target: the SOP
    it is already in}`` for those that may not."""
    taken = already_in(session, target_kind, [t for t, _ in pairs], excluded_templates)
    return [p for p in pairs if p[0] not in taken], taken


def record_skips(
    session: Session,
    template: SopTemplate,
    version: TemplateVersion,
    skipped: dict[int, int],
    now: datetime,
    *,
    cycle: int = 0,
) -> int:
    """Record each excluded target as a ``skipped`` enrollment naming the SOP it
    is in (shown on the target's page); no delivery is written. Returns how many."""
    if not skipped:
        return 0
    rows = [
        {
            "template_id": template.id,
            "version_id": version.id,
            "target_kind": template.target_kind,
            "target_id": target_id,
            "cycle": cycle,
            "anchor_at": now,
            "enrolled_at": now,
            "status": EnrollmentStatus.SKIPPED,
            "exited_at": now,
            "exit_reason": REASON.format(id=other),
        }
        for target_id, other in sorted(skipped.items())
    ]
    for chunk in chunked(rows):
        session.execute(
            insert_of(session, ENROLLMENTS)  # type: ignore[arg-type]
            .values(list(chunk))
            .on_conflict_do_nothing()
        )
    return len(rows)
