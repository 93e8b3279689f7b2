"""A/B variants and holdouts: who is in the control group, who sees which content.

Both are decided by a hash of the enrollment's identity -- template, target and
cycle (plus the touchpoint's name for a variant) -- never by chance at send time:
a retry, a resend after a crash, a version move and a forecast all land on the
same answer. Held-out enrollments' deliveries are written already ``skipped``
with the reason ``holdout``, so no channel ever sees them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, literal, select, true
from sqlmodel import Session, col

from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS, among, chunked, execute_many
from sop_templates.models import TemplateVersion, Touchpoint
from sop_templates.schemas import TemplateSpec, TrackingSpec, VariantSpec

HOLDOUT_REASON = "holdout"


def _fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(
    template_id: int, target_kind: str, target_id: int, cycle: int, percent: float
) -> bool:
    """Whether this enrollment is in the template's control group."""
    if percent <= 0:
        return False
    return _fraction(f"holdout:{template_id}:{target_kind}:{target_id}:{cycle}") < percent / 100


def pick_variant(
    variants: Sequence[VariantSpec],
    template_id: int,
    target_kind: str,
    target_id: int,
    cycle: int,
    touchpoint: str,
) -> VariantSpec:
    """The variant this enrollment sees at ``touchpoint`` (weighted, stable)."""
    point = _fraction(f"variant:{template_id}:{target_kind}:{target_id}:{cycle}:{touchpoint}")
    total = sum(v.weight for v in variants)
    edge = 0.0
    for variant in variants:
        edge += variant.weight / total
        if point < edge:
            return variant
    return variants[-1]


# -- enrolling -------------------------------------------------------------------


def held_row(now: Any) -> dict[str, Any]:
    """The columns that make a delivery row a held-out one."""
    return {"status": DeliveryStatus.SKIPPED, "reason": HOLDOUT_REASON, "finished_at": now}


def held_enrollments(
    spec: TemplateSpec,
    template_id: int,
    target_kind: str,
    cycle: int,
    enrollments: Sequence[tuple[Any, ...]],
) -> set[int]:
    """Ids of the ``(enrollment id, target id, ...)`` that are held out."""
    if spec.holdout <= 0:
        return set()
    return {
        row[0]
        for row in enrollments
        if in_holdout(template_id, target_kind, row[1], cycle, spec.holdout)
    }


def hold_out(
    rows: list[tuple[Any, ...]],
    columns: Sequence[str],
    held: set[int],
    created: Any,
) -> list[tuple[Any, ...]]:
    """Delivery rows (tuples in ``columns`` order) with the held-out enrollments'
    ones written ``skipped`` / ``holdout`` instead of scheduled."""
    if not held:
        return rows
    at_enrollment, at_status = columns.index("enrollment_id"), columns.index("status")
    at_reason, at_finished = columns.index("reason"), columns.index("finished_at")
    out = []
    for row in rows:
        if row[at_enrollment] in held:
            values = list(row)
            values[at_status] = DeliveryStatus.SKIPPED
            values[at_reason] = HOLDOUT_REASON
            values[at_finished] = created
            row = tuple(values)
        out.append(row)
    return out


def holdout_columns(status: str, reason: str | None, now: Any) -> tuple[Any, ...]:
    """The (status, reason, attempts, created_at, finished_at) columns of a cron
    fan-out's ``INSERT ... SELECT`` over enrollments: a held-out enrollment's
    row is written skipped."""
    d, held = DELIVERIES.c, ENROLLMENTS.c.holdout == true()
    finished = literal(now, d.finished_at.type)
    if status != DeliveryStatus.SCHEDULED:  # missed or skipped anyway
        return (
            literal(status),
            literal(reason, d.reason.type),
            literal(0),
            literal(now, d.created_at.type),
            finished,
        )
    return (
        case((held, literal(DeliveryStatus.SKIPPED)), else_=literal(status)),
        case((held, literal(HOLDOUT_REASON)), else_=literal(reason, d.reason.type)),
        literal(0),
        literal(now, d.created_at.type),
        case((held, finished), else_=literal(None, d.finished_at.type)),
    )


def mark_held(session: Session, held: set[int]) -> None:
    """Record the control group on the enrollments."""
    for chunk in chunked(sorted(held)):
        session.execute(
            ENROLLMENTS.update().where(among(ENROLLMENTS.c.id, chunk, session)).values(holdout=True)
        )


def store_variants(
    session: Session,
    version: TemplateVersion,
    spec: TemplateSpec,
    *,
    enrollment_ids: Sequence[int] | None = None,
    occurrence: int | None = None,
) -> int:
    """Write each new delivery's variant (``deliveries.variant``), for the
    touchpoints of ``version`` that have variants: the deliveries of the given
    enrollments, or of one cron occurrence. Nothing to do (no query) otherwise."""
    with_variants = {t.name: t.variants for t in spec.touchpoints if t.variants}
    if not with_variants:
        return 0
    touchpoints: dict[int, str] = dict(
        session.execute(
            select(Touchpoint.id, Touchpoint.name).where(  # type: ignore[call-overload]
                col(Touchpoint.version_id) == version.id,
                col(Touchpoint.name).in_(list(with_variants)),
            )
        ).all()
    )
    d, e = DELIVERIES.c, ENROLLMENTS.c
    query = (
        select(d.id, d.touchpoint_id, e.template_id, e.target_kind, e.target_id, e.cycle)
        .join(ENROLLMENTS, e.id == d.enrollment_id)
        .where(d.touchpoint_id.in_(list(touchpoints)), d.variant.is_(None))
    )
    if occurrence is not None:
        query = query.where(d.occurrence == occurrence)
    batches = (
        [query.where(among(d.enrollment_id, chunk, session)) for chunk in chunked(enrollment_ids)]
        if enrollment_ids is not None
        else [query]
    )
    updates: list[dict[str, Any]] = []
    for stmt in batches:
        for row in session.execute(stmt).all():
            name = touchpoints[row.touchpoint_id]
            variant = pick_variant(
                with_variants[name],
                row.template_id,
                row.target_kind,
                row.target_id,
                row.cycle,
                name,
            )
            updates.append({"b_id": row.id, "b_variant": variant.name})
    if updates:
        write = (
            DELIVERIES.update()
            .where(d.id == bindparam("b_id"))
            .values(variant=bindparam("b_variant"))
        )
        execute_many(session.connection(), write, updates)
    return len(updates)


# -- sending -----------------------------------------------------------------------


@dataclass
class VersionOutcomes:
    """What of a published version's spec matters when a delivery is prepared."""

    template_id: int
    variants: dict[str, list[VariantSpec]] = field(default_factory=dict)
    tracking: TrackingSpec | None = None


@dataclass
class VariantFacts:
    cycles: dict[int, int] = field(default_factory=dict)  # enrollment id → cycle
    stored: dict[int, str] = field(default_factory=dict)  # delivery id → variant


class PreparingCache:
    """Published versions are immutable: their variants and tracking are read
    once per dispatcher."""

    def __init__(self) -> None:
        self.versions: dict[int, VersionOutcomes] = {}

    def load(self, session: Session, version_ids: set[int]) -> None:
        missing = version_ids - self.versions.keys()
        if not missing:
            return
        for version_id, template_id, raw in session.execute(
            select(TemplateVersion.id, TemplateVersion.template_id, TemplateVersion.spec).where(  # type: ignore[call-overload]
                col(TemplateVersion.id).in_(missing)
            )
        ).all():
            spec = TemplateSpec.model_validate(raw)
            self.versions[version_id] = VersionOutcomes(
                template_id=template_id,
                variants={t.name: t.variants for t in spec.touchpoints if t.variants},
                tracking=spec.tracking,
            )

    def facts(self, session: Session, rows: Sequence[Any]) -> VariantFacts:
        """Enrollment cycles and stored variants of the rows whose version has
        variants (no query when none has)."""
        facts = VariantFacts()
        picked = sorted(
            {
                r.id
                for r in rows
                if r.version_id in self.versions and self.versions[r.version_id].variants
            }
        )
        e, d = ENROLLMENTS.c, DELIVERIES.c
        for chunk in chunked(picked):
            for delivery_id, variant, enrollment_id, cycle in session.execute(
                select(d.id, d.variant, e.id, e.cycle)
                .join(ENROLLMENTS, e.id == d.enrollment_id)
                .where(among(d.id, chunk, session))
            ).all():
                facts.cycles[enrollment_id] = cycle
                if variant:
                    facts.stored[delivery_id] = variant
        return facts

    def content_for(
        self, row: Any, touchpoint: Any, facts: VariantFacts
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The content parts ``row`` sends and the variant's name (None: no
        variants). The variant stored on the delivery wins while the version
        still has it (a version move keeps what the enrollment was shown)."""
        outcomes = self.versions.get(row.version_id)
        variants = outcomes.variants.get(touchpoint.name) if outcomes else None
        if not variants:
            return touchpoint.content, None
        stored = facts.stored.get(row.id)
        chosen = next((v for v in variants if v.name == stored), None)
        if chosen is None:
            chosen = pick_variant(
                variants,
                row.template_id,
                row.target_kind,
                row.target_id,
                facts.cycles.get(row.enrollment_id, 0),
                touchpoint.name,
            )
        return [p.model_dump(mode="json") for p in chosen.content], chosen.name


def cache_of(owner: Any) -> PreparingCache:
    """The dispatcher's cache (made on first use)."""
    cache = getattr(owner, "_outcomes_cache", None)
    if cache is None:
        cache = PreparingCache()
        owner._outcomes_cache = cache
    return cache
