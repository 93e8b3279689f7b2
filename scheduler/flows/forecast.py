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

import heapq
import time as timer
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import String, cast, func, select
from sqlmodel import Session

from audiences.tables import target_table
from scheduler.flows import enrollment, fan_out
from scheduler.outbox import policies
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, among, chunked
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.schemas import TemplateSpec
from sop_templates.timing import cron_occurrences, get_zone

HORIZON_DAYS = 30
FIRST_ROWS = 100
_AT = {name: i for i, name in enumerate(scheduler_service.DELIVERY_COLUMNS)}


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
    # the very targets publishing enrolls (mutually exclusive SOPs honoured)
    pairs = enrollment.publish_targets(session, spec, template_id, now)[0] if at_publish else []

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
    at = _AT
    # Enrollment's rows depend on the anchor only: worked out once per anchor
    # (with a fixed start, once), exactly as ``enroll`` makes them.
    by_anchor: dict[datetime, list[int]] = defaultdict(list)
    for target_id, anchor in pairs:
        by_anchor[anchor].append(target_id)
    patterns: dict[datetime, list[tuple[int, str, str | None, datetime]]] = {}
    for anchor in by_anchor:
        patterns[anchor] = [
            (row[at["touchpoint_id"]], row[at["status"]], row[at["reason"]], row[at["run_at"]])
            for row in scheduler_service._delivery_rows(
                [(0, 0, anchor)],
                plans,
                fake,  # type: ignore[arg-type]
                SimpleNamespace(id=0),  # type: ignore[arg-type]
                spec.channel,
                zone,
                now,
            )
        ]
    held = {
        target_id
        for target_id, _ in pairs
        if experiments.in_holdout(template_id, spec.target, target_id, 0, spec.holdout)
    }
    deliveries = sum(len(patterns[anchor]) for _, anchor in pairs)

    # What dispatch decides later: workspace quiet hours, caps, overlap. Targets
    # with the same rows and the same other sends get the same decisions: each
    # pattern is worked out once.
    horizon = now + timedelta(days=HORIZON_DAYS)
    treated_ids = {t for t, _ in pairs if t not in held}
    others = _other_sops(session, spec.target, treated_ids, horizon)
    recent = (
        _recent_sends(session, spec.target, treated_ids, now - timedelta(days=31))
        if policy.cap is not None
        else {}
    )
    workspace_quiet = policy.quiet if spec.quiet_hours is None else None
    memo: dict[Any, list[tuple[str, datetime, str | None]]] = {}
    decided_for: dict[int, list[tuple[str, datetime, str | None]]] = {}  # target → its rows
    counted: Counter[tuple[datetime, str, str]] = Counter()
    skipped: Counter[str] = Counter()
    for target_id, anchor in pairs:
        pattern = patterns[anchor]
        if target_id in held:
            skipped[experiments.HOLDOUT_REASON] += len(pattern)
            continue
        key = (anchor, recent.get(target_id, ""), others.get(target_id, ""))
        if key not in memo:
            sends = (_instants(key[1]) if key[1] else []) + (_instants(key[2]) if key[2] else [])
            memo[key] = _decide_pattern(pattern, sorted(sends), policy, workspace_quiet, zone)
        counted[key] += 1
        decided_for[target_id] = memo[key]
    capped: Counter[str] = Counter()
    days: dict[date, Counter[str]] = defaultdict(Counter)
    for key, n in counted.items():
        for (step, status_before, reason_before, _), (status, when, reason) in zip(
            patterns[key[0]], memo[key], strict=True
        ):
            if status_before == DeliveryStatus.SKIPPED:
                skipped[reason_before or "skipped"] += n
                continue
            if status != DeliveryStatus.SCHEDULED and (reason or "").startswith("frequency cap"):
                capped[_reason_kind(reason)] += n
            if status != DeliveryStatus.SKIPPED and when < horizon:
                days[when.astimezone(zone).date()][names[step]] += n
    treated = len(pairs) - len(held)
    for index, tp in enumerate(spec.touchpoints):
        if tp.timing.kind != "cron":
            continue
        for occurrence in cron_occurrences(tp.timing, zone, now, horizon):  # type: ignore[arg-type]
            days[occurrence.astimezone(zone).date()][names[index]] += treated

    # the first rows of who gets what when: the earliest of each anchor's rows
    # for its lowest target ids are enough candidates
    candidates = []
    row: tuple[str, datetime, str | None]
    for anchor, target_ids in by_anchor.items():
        for position, (step, status, reason, when) in enumerate(patterns[anchor]):
            for target_id in sorted(target_ids)[:FIRST_ROWS]:
                if target_id in held:
                    row = (DeliveryStatus.SKIPPED, when, experiments.HOLDOUT_REASON)
                elif status == DeliveryStatus.SKIPPED:
                    row = (status, when, reason)
                else:
                    row = decided_for[target_id][position]
                candidates.append((row[1], target_id, step, *row))
    first = heapq.nsmallest(FIRST_ROWS, candidates, key=lambda c: (c[0], c[1], c[2]))
    target_names = _names(session, spec.target, {c[1] for c in first})
    shown = []
    for when, target_id, step, status, _, reason in first:
        tp = spec.touchpoints[step]
        variant = (
            experiments.pick_variant(tp.variants, template_id, spec.target, target_id, 0, tp.name)
            if tp.variants
            else None
        )
        shown.append(
            ForecastRow(
                target_id=target_id,
                target_name=target_names.get(target_id, ""),
                touchpoint=tp.name,
                variant=variant.name if variant else None,
                at=when,
                local=when.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
                status=status,
                reason=reason,
            )
        )
    today = now.astimezone(zone).date()
    n_skipped = sum(skipped.values())
    return Forecast(
        template_id=template_id,
        computed_ms=round((timer.perf_counter() - started) * 1000),
        enrolls_at_publish=at_publish,
        targets=len(pairs),
        held_out=len(held),
        deliveries=deliveries,
        scheduled=deliveries - n_skipped,
        skipped=n_skipped,
        skipped_reasons=_counts(skipped),
        capped=_counts(capped),
        overlap_targets=len(others),
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
    )


def _decide_pattern(
    pattern: list[tuple[int, str, str | None, datetime]],
    sends: list[datetime],
    policy: policies.TemplatePolicy,
    workspace_quiet: policies.QuietHours | None,
    zone: Any,
) -> list[tuple[str, datetime, str | None]]:
    """Dispatch's decisions for one target's rows (in ``pattern`` order): rows
    written skipped stay so; the scheduled ones in run order through
    :func:`_dispatch`."""
    order = sorted(
        (i for i, row in enumerate(pattern) if row[1] != DeliveryStatus.SKIPPED),
        key=lambda i: pattern[i][3],
    )
    decided = _dispatch(
        [(pattern[i][3], pattern[i][2]) for i in order], sends, policy, workspace_quiet, zone
    )
    out: list[tuple[str, datetime, str | None]] = [(row[1], row[3], row[2]) for row in pattern]
    for i, result in zip(order, decided, strict=True):
        out[i] = result
    return out


def _dispatch(
    due: list[tuple[datetime, str | None]],
    sends: list[datetime],
    policy: policies.TemplatePolicy,
    workspace_quiet: policies.QuietHours | None,
    zone: Any,
) -> list[tuple[str, datetime, str | None]]:
    """(status, when, reason) of one target's scheduled rows (in run order) as
    dispatch would decide them: workspace quiet hours, then the frequency cap
    counting ``sends`` (what the target got or will get from other SOPs) and
    this SOP's own earlier rows; a cap deferral lands after quiet hours."""
    out = []
    for at, reason in due:
        status = DeliveryStatus.SCHEDULED
        if workspace_quiet is not None:
            decision = workspace_quiet.decide(at, zone)
            if decision.action == "skip":
                out.append((DeliveryStatus.SKIPPED, at, decision.reason))
                continue
            if decision.action == "defer" and decision.until is not None:
                at, reason = decision.until, decision.reason
        if policy.cap is not None:
            decision = policy.cap.decide(at, zone, [s for s in sends if s <= at])
            if decision.action == "skip":
                out.append((DeliveryStatus.SKIPPED, at, decision.reason))
                continue
            if decision.action == "defer" and decision.until is not None:
                at, reason, status = decision.until, decision.reason, "deferred"
                if policy.quiet is not None:
                    end = policy.quiet.window_end(at, zone)
                    if end is not None:
                        at, reason = end, f"{reason}, after quiet hours {policy.quiet.label}"
        sends.append(at)
        out.append((status, at, reason))
    return out


def _reason_kind(reason: str | None) -> str:
    """A cap reason without its per-target numbers and times, for counting."""
    text = reason or ""
    return text.split(":")[0] if text.startswith("frequency cap") else text


def _counts(counter: Counter[str]) -> list[ReasonCount]:
    return [ReasonCount(reason=r, count=n) for r, n in counter.most_common()]


def _instants(text: str) -> list[datetime]:
    """Instants aggregated as text (SQLite: naive UTC; PostgreSQL: with offset)."""
    out = []
    for item in text.split(","):
        value = datetime.fromisoformat(item.strip())
        out.append(value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC))
    return out


def _per_target(session: Session, column: Any, *where: Any) -> dict[int, str]:
    """target id → its ``column`` instants as one text: one row per target, and
    targets with the same instants share the text (decoded once, by pattern)."""
    d = DELIVERIES.c
    return dict(
        session.execute(  # type: ignore[arg-type]
            select(d.target_id, func.aggregate_strings(cast(column, String), ","))
            .where(*where)
            .group_by(d.target_id)
        ).all()
    )


def _other_sops(
    session: Session, kind: str, target_ids: set[int], horizon: datetime
) -> dict[int, str]:
    """When the live SOPs' pending deliveries to these targets go out (before
    the horizon): target id → run times (as text, see :func:`_per_target`)."""
    if not target_ids:
        return {}
    d = DELIVERIES.c
    runs = _per_target(
        session,
        d.run_at,
        d.status.in_(DeliveryStatus.PENDING),
        d.run_at < horizon,
        d.target_kind == kind,
    )
    # and the rows the planner has yet to write (a fixed start's later touchpoints)
    for run_at, targets in fan_out.waiting_sends(session, kind, horizon):
        if run_at >= horizon:
            continue
        at = run_at.isoformat()
        for target_id in targets & target_ids:
            runs[target_id] = f"{runs[target_id]},{at}" if target_id in runs else at
    return {t: text for t, text in runs.items() if t in target_ids}


def _recent_sends(
    session: Session, kind: str, target_ids: set[int], since: datetime
) -> dict[int, str]:
    """What these targets received since ``since`` (frequency caps count it)."""
    d = DELIVERIES.c
    sent: dict[int, str] = {}
    for chunk in chunked(sorted(target_ids), 10_000):
        sent.update(
            _per_target(
                session,
                d.sent_at,
                d.target_kind == kind,
                among(d.target_id, chunk, session),
                d.sent_at.is_not(None),
                d.sent_at >= since,
                d.status == DeliveryStatus.SENT,
            )
        )
    return sent


def _names(session: Session, kind: str, ids: set[int]) -> dict[int, str]:
    table = target_table(kind)
    if not ids:
        return {}
    return dict(
        session.execute(select(table.c.id, table.c.name).where(table.c.id.in_(sorted(ids)))).all()  # type: ignore[arg-type]
    )
