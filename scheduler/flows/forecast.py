"""Forecast before publish: what a template's draft would do to the audience as
it stands, worked out without writing anything.

It runs the same code publishing runs -- the segment query that picks who
enrolls (``enrollment.segment_targets``), the due-time computation of enrollment
(``service._delivery_rows``, template quiet hours included) and the holdout
(``outcomes.experiments``) -- in memory, so the numbers are the ones publishing
then creates. On top it applies what dispatch decides later: workspace quiet
hours and the frequency cap, counting the sends and scheduled deliveries of
the other live SOPs to the same targets (overlap).
"""

from __future__ import annotations

import time as timer
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlmodel import Session

from audiences.tables import target_table
from scheduler.flows import enrollment
from scheduler.outbox import policies
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, chunked
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.schemas import TemplateSpec
from sop_templates.timing import cron_occurrences, get_zone

HORIZON_DAYS = 30
FIRST_ROWS = 100
_COLUMNS = scheduler_service.DELIVERY_COLUMNS
_AT = {name: _COLUMNS.index(name) for name in _COLUMNS}


class ForecastError(templates_service.TemplateError):
    """The draft cannot be forecast (it is not valid); the message says why."""


class StepDay(BaseModel):
    day: date
    total: int
    steps: dict[str, int]


class ReasonCount(BaseModel):
    reason: str
    count: int


class ForecastRow(BaseModel):
    target_id: int
    target_name: str
    touchpoint: str
    variant: str | None
    at: datetime  # when it would go out (UTC)
    local: str  # the same in the template's zone
    status: str  # scheduled / skipped / deferred
    reason: str | None


class Forecast(BaseModel):
    template_id: int
    computed_ms: int
    enrolls_at_publish: bool
    targets: int  # who would be enrolled now
    held_out: int
    deliveries: int  # one-off delivery rows publishing writes now
    scheduled: int
    skipped: int
    skipped_reasons: list[ReasonCount]
    capped: list[ReasonCount]  # deferred or skipped later, at dispatch
    overlap_targets: int  # also receive other live SOPs' messages in the horizon
    cron_per_occurrence: int  # deliveries each cron occurrence fans out
    days: list[StepDay]
    rows: list[ForecastRow]


def forecast(
    session: Session,
    template_id: int,
    now: datetime,
    *,
    workspace: policies.WorkspaceDefaults | None = None,
    spec: TemplateSpec | None = None,
) -> Forecast:
    """Forecast the draft of ``template_id`` (or ``spec``) from ``now``. Reads only."""
    started = timer.perf_counter()
    template = templates_service.get_template(session, template_id)
    if spec is None:
        try:
            spec = TemplateSpec.model_validate(template.draft)
        except ValidationError as exc:
            raise ForecastError(f"the draft is not valid: {exc.errors()[0]['msg']}") from None
    zone = get_zone(spec.timezone)
    policy = policies.template_policy(spec, workspace)
    at_publish = enrollment.enrolls_at_publish(spec)
    pairs = enrollment.segment_targets(session, spec, template_id, now) if at_publish else []

    # -- what publishing writes: the very rows enrollment would make
    plans = [
        scheduler_service._Plan(
            touchpoint_id=index,
            timing=tp.timing,
            kind=tp.timing.kind,
            grace=timedelta(seconds=tp.grace_seconds),
            past_policy=tp.past_policy,
            mode=tp.mode,
            quiet=policies.quiet_hours_of(spec),
            zone=zone,
        )
        for index, tp in enumerate(spec.touchpoints)
    ]
    names = [tp.name for tp in spec.touchpoints]
    fake = SimpleNamespace(id=template_id, target_kind=spec.target)
    enrollments = [(target_id, target_id, anchor) for target_id, anchor in pairs]
    rows = scheduler_service._delivery_rows(
        enrollments,
        plans,
        fake,
        SimpleNamespace(id=0),
        spec.channel,
        zone,
        now,  # type: ignore[arg-type]
    )
    held = experiments.held_enrollments(spec, template_id, spec.target, 0, enrollments)
    rows = experiments.hold_out(rows, _COLUMNS, held, now)
    status_at, reason_at, run_at, step_at, target_at = (
        _AT["status"],
        _AT["reason"],
        _AT["run_at"],
        _AT["touchpoint_id"],
        _AT["target_id"],
    )
    skipped = Counter(
        row[reason_at] or "skipped" for row in rows if row[status_at] == DeliveryStatus.SKIPPED
    )

    # -- what dispatch decides later: workspace quiet hours, caps, overlap
    horizon = now + timedelta(days=HORIZON_DAYS)
    live = [row for row in rows if row[status_at] == DeliveryStatus.SCHEDULED]
    live.sort(key=lambda row: (row[target_at], row[run_at]))
    others = _other_sops(session, spec.target, {row[target_at] for row in live}, now, horizon)
    lookback = now - timedelta(days=31)
    recent = (
        policies.recent_sends(session, [(spec.target, t) for t in others["targets"]], lookback)
        if policy.cap is not None
        else policies.RecentSends()
    )
    capped: Counter[str] = Counter()
    outcome: dict[int, tuple[str, datetime, str | None]] = {}  # index in rows → outcome
    index_of = {id(row): i for i, row in enumerate(rows)}
    admitted: dict[int, list[datetime]] = defaultdict(list)
    for row in live:
        target_id, at = row[target_at], row[run_at]
        status, reason = DeliveryStatus.SCHEDULED, row[reason_at]
        if policy.quiet is not None and spec.quiet_hours is None:  # the workspace's
            decision = policy.quiet.decide(at, zone)
            if decision.action == "skip":
                status, reason = DeliveryStatus.SKIPPED, decision.reason
            elif decision.action == "defer" and decision.until is not None:
                at, reason = decision.until, decision.reason
        if status == DeliveryStatus.SCHEDULED and policy.cap is not None:
            sends = [
                *recent.sent.get((spec.target, target_id), ()),
                *others["runs"].get(target_id, ()),
                *admitted[target_id],
            ]
            decision = policy.cap.decide(at, zone, [s for s in sends if s <= at])
            if decision.action == "skip":
                status, reason = DeliveryStatus.SKIPPED, decision.reason
                capped[_reason_kind(decision.reason)] += 1
            elif decision.action == "defer" and decision.until is not None:
                at, reason, status = decision.until, decision.reason, "deferred"
                capped[_reason_kind(decision.reason)] += 1
        if status != DeliveryStatus.SKIPPED:
            admitted[target_id].append(at)
        outcome[index_of[id(row)]] = (status, at, reason)

    days: dict[date, Counter[str]] = defaultdict(Counter)
    for i, (status, at, _reason) in outcome.items():
        if status != DeliveryStatus.SKIPPED and at < horizon:
            days[at.astimezone(zone).date()][names[rows[i][step_at]]] += 1
    treated = len(enrollments) - len(held)
    for index, tp in enumerate(spec.touchpoints):
        if tp.timing.kind != "cron":
            continue
        for occurrence in cron_occurrences(tp.timing, zone, now, horizon):  # type: ignore[arg-type]
            days[occurrence.astimezone(zone).date()][names[index]] += treated

    first = sorted(range(len(rows)), key=lambda i: (rows[i][run_at], rows[i][target_at]))
    first = first[:FIRST_ROWS]
    target_names = _names(session, spec.target, {rows[i][target_at] for i in first})
    shown = []
    for i in first:
        row = rows[i]
        status, at, reason = outcome.get(i, (row[status_at], row[run_at], row[reason_at]))
        tp = spec.touchpoints[row[step_at]]
        variant = (
            experiments.pick_variant(
                tp.variants, template_id, spec.target, row[target_at], 0, tp.name
            ).name
            if tp.variants
            else None
        )
        shown.append(
            ForecastRow(
                target_id=row[target_at],
                target_name=target_names.get(row[target_at], ""),
                touchpoint=tp.name,
                variant=variant,
                at=at,
                local=at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
                status=status,
                reason=reason,
            )
        )
    today = now.astimezone(zone).date()
    return Forecast(
        template_id=template_id,
        computed_ms=0,
        enrolls_at_publish=at_publish,
        targets=len(enrollments),
        held_out=len(held),
        deliveries=len(rows),
        scheduled=len(rows) - sum(skipped.values()),
        skipped=sum(skipped.values()),
        skipped_reasons=_counts(skipped),
        capped=_counts(capped),
        overlap_targets=len(others["targets"]),
        cron_per_occurrence=treated if spec.has_cron else 0,
        days=[
            StepDay(
                day=today + timedelta(days=n),
                total=sum(days[today + timedelta(days=n)].values()),
                steps={name: days[today + timedelta(days=n)][name] for name in names},
            )
            for n in range(HORIZON_DAYS)
        ],
        rows=shown,
    ).model_copy(update={"computed_ms": round((timer.perf_counter() - started) * 1000)})


def _reason_kind(reason: str | None) -> str:
    """A cap reason without its per-target numbers and times, for counting."""
    text = reason or ""
    return text.split(":")[0] if text.startswith("frequency cap") else text


def _counts(counter: Counter[str]) -> list[ReasonCount]:
    return [ReasonCount(reason=r, count=n) for r, n in counter.most_common()]


def _other_sops(
    session: Session, kind: str, target_ids: set[int], now: datetime, horizon: datetime
) -> dict[str, Any]:
    """Scheduled deliveries of the live SOPs to these targets within the horizon:
    ``runs`` (target id → run times) and ``targets`` (who has any)."""
    d = DELIVERIES.c
    runs: dict[int, list[datetime]] = defaultdict(list)
    for chunk in chunked(sorted(target_ids), 900):
        for target_id, run_at in session.execute(
            select(d.target_id, d.run_at).where(
                d.target_kind == kind,
                d.target_id.in_(list(chunk)),
                d.status.in_(DeliveryStatus.PENDING),
                d.run_at < horizon,
            )
        ).all():
            runs[target_id].append(run_at)
    return {"runs": runs, "targets": set(runs)}


def _names(session: Session, kind: str, ids: set[int]) -> dict[int, str]:
    table = target_table(kind)
    if not ids:
        return {}
    return dict(
        session.execute(select(table.c.id, table.c.name).where(table.c.id.in_(sorted(ids)))).all()  # type: ignore[arg-type]
    )
