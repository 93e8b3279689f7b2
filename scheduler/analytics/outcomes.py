"""What an SOP achieved: conversions, the per-step funnel, A/B variants and the
lift over the holdout group, for the report, the API and the CSV export.

Figures per version: enrolled (held out or not) → reached step N (a delivery of
it sent) → clicked (a person opened a tracked link of it) → converted (the goal
reached after that step was sent; ``attributed``: it was the last one before).
Comparisons (variant B against A, the SOP against its holdout) carry a
two-proportion z-test, stated plainly: "B 转化率高 3.1 个百分点，置信度 97%".
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, func, select
from sqlmodel import Session

from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS
from scheduler.outcomes.models import Conversion, LinkClick
from sop_templates.models import TemplateVersion, Touchpoint

CONVERSIONS = Conversion.__table__  # type: ignore[attr-defined]
CLICKS = LinkClick.__table__  # type: ignore[attr-defined]
TOUCHPOINTS = Touchpoint.__table__  # type: ignore[attr-defined]
VERSIONS = TemplateVersion.__table__  # type: ignore[attr-defined]


class Comparison(BaseModel):
    """``rate_b - rate_a`` in percentage points, with the z-test's confidence."""

    label_a: str
    label_b: str
    rate_a: float
    rate_b: float
    difference_points: float
    confidence: float  # 0..1: 1 - the two-sided p-value
    statement: str
    statement_en: str


class FunnelStep(BaseModel):
    version: int
    position: int
    touchpoint: str
    variant: str | None = None  # None: all variants together
    reached: int  # enrollments the step was sent to
    clicked: int  # of which a person opened one of its tracked links
    clicks: int  # clicks by people, repeats included
    repeat_clicks: int
    bot_clicks: int  # link previews and crawlers, counted apart
    converted: int  # reached the goal after this step was sent
    attributed: int  # ... and this was the last step before it
    conversion_rate: float  # converted / reached


class VersionOutcome(BaseModel):
    version: int
    enrolled: int
    held_out: int
    converted: int
    converted_treated: int
    converted_held_out: int
    lift: Comparison | None = None  # treated vs holdout


class OutcomeReport(BaseModel):
    template_id: int
    has_goal: bool
    versions: list[VersionOutcome]
    funnel: list[FunnelStep]
    variants: list[FunnelStep]
    comparisons: list[Comparison]


def two_proportion(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """(difference in percentage points b - a, confidence 0..1) of a pooled
    two-proportion z-test; no data or no variance: confidence 0."""
    if n_a <= 0 or n_b <= 0:
        return 0.0, 0.0
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    diff = (p_b - p_a) * 100
    if se == 0:
        return diff, 0.0
    z = abs(p_b - p_a) / se
    return diff, math.erf(z / math.sqrt(2))


def compare(
    label_a: str,
    x_a: int,
    n_a: int,
    label_b: str,
    x_b: int,
    n_b: int,
    *,
    english: tuple[str, str] | None = None,
) -> Comparison:
    """B against A; ``english``: the two labels in the English statement."""
    en_a, en_b = english or (label_a, label_b)
    diff, confidence = two_proportion(x_a, n_a, x_b, n_b)
    pct = round(confidence * 100)
    word, word_en = ("高", "higher") if diff >= 0 else ("低", "lower")
    return Comparison(
        label_a=label_a,
        label_b=label_b,
        rate_a=x_a / n_a if n_a else 0.0,
        rate_b=x_b / n_b if n_b else 0.0,
        difference_points=round(diff, 2),
        confidence=round(confidence, 4),
        statement=f"{label_b} 转化率{word} {abs(diff):.1f} 个百分点，置信度 {pct}%",
        statement_en=(
            f"{en_b} converts {abs(diff):.1f} percentage points {word_en} than "
            f"{en_a}, confidence {pct}%"
        ),
    )


def report(session: Session, template_id: int) -> OutcomeReport:
    """The outcome report of one template (every version)."""
    e, c, d, k, t, v = (
        ENROLLMENTS.c,
        CONVERSIONS.c,
        DELIVERIES.c,
        CLICKS.c,
        TOUCHPOINTS.c,
        VERSIONS.c,
    )
    numbers = dict(
        session.execute(select(v.id, v.version).where(v.template_id == template_id)).all()
    )
    goal_versions = {
        vid
        for vid, spec in session.execute(
            select(v.id, v.spec).where(v.template_id == template_id)
        ).all()
        if (spec or {}).get("goal")
    }
    enrolled: dict[tuple[int, bool], int] = defaultdict(int)
    for version_id, holdout, n in session.execute(
        select(e.version_id, e.holdout, func.count())
        .where(e.template_id == template_id)
        .group_by(e.version_id, e.holdout)
    ).all():
        enrolled[(version_id, bool(holdout))] += n
    converted: dict[tuple[int, bool], int] = defaultdict(int)
    conversions = session.execute(
        select(c.version_id, c.holdout, c.touchpoint_name, c.variant, c.touched).where(
            c.template_id == template_id
        )
    ).all()
    for row in conversions:
        converted[(row.version_id, bool(row.holdout))] += 1

    versions = []
    for version_id in sorted({vid for vid, _ in enrolled} | {vid for vid, _ in converted}):
        n_t, n_h = enrolled[(version_id, False)], enrolled[(version_id, True)]
        x_t, x_h = converted[(version_id, False)], converted[(version_id, True)]
        versions.append(
            VersionOutcome(
                version=numbers.get(version_id, 0),
                enrolled=n_t + n_h,
                held_out=n_h,
                converted=x_t + x_h,
                converted_treated=x_t,
                converted_held_out=x_h,
                lift=(
                    compare(
                        "对照组", x_h, n_h, "SOP", x_t, n_t, english=("the control group", "SOP")
                    )
                    if n_h and n_t
                    else None
                ),
            )
        )

    # reached: enrollments a step was sent to, per version / step / variant
    steps: dict[tuple[int, str], int] = {}
    reached: dict[tuple[int, str, str | None], int] = defaultdict(int)
    for version_id, name, position, variant, n in session.execute(
        select(
            d.version_id, t.name, t.position, d.variant, func.count(func.distinct(d.enrollment_id))
        )
        .join(TOUCHPOINTS, t.id == d.touchpoint_id)
        .where(d.template_id == template_id, d.status == DeliveryStatus.SENT)
        .group_by(d.version_id, t.name, t.position, d.variant)
    ).all():
        steps[(version_id, name)] = position
        reached[(version_id, name, variant)] += n
    for version_id, name, position in session.execute(
        select(t.version_id, t.name, t.position).where(t.template_id == template_id)
    ).all():
        if version_id in numbers and any(vid == version_id for vid, _ in enrolled):
            steps.setdefault((version_id, name), position)

    clicks: dict[tuple[int, str, str | None], dict[str, int]] = defaultdict(
        lambda: {"people": 0, "clicks": 0, "repeat": 0, "bot": 0}
    )
    for version_id, name, variant, bot, repeat, people, n in session.execute(
        select(
            d.version_id,
            k.touchpoint_name,
            d.variant,
            k.bot,
            k.repeat,
            func.count(func.distinct(k.enrollment_id)),
            func.count(),
        )
        .join(DELIVERIES, d.id == k.delivery_id)
        .where(k.template_id == template_id)
        .group_by(d.version_id, k.touchpoint_name, d.variant, k.bot, k.repeat)
    ).all():
        figures = clicks[(version_id, name, variant)]
        if bot:
            figures["bot"] += n
        else:
            figures["clicks"] += n
            figures["repeat"] += n if repeat else 0
            figures["people"] += 0 if repeat else people

    touched: dict[tuple[int, str], int] = defaultdict(int)
    attributed: dict[tuple[int, str, str | None], int] = defaultdict(int)
    for row in conversions:
        for name in row.touched or []:
            touched[(row.version_id, name)] += 1
        if row.touchpoint_name:
            attributed[(row.version_id, row.touchpoint_name, row.variant)] += 1
    # converted after a step, per variant: the variant the enrollment was sent there
    touched_variant: dict[tuple[int, str, str | None], int] = defaultdict(int)
    for version_id, name, variant, n in session.execute(
        select(d.version_id, t.name, d.variant, func.count(func.distinct(c.enrollment_id)))
        .select_from(CONVERSIONS)
        .join(
            DELIVERIES,
            and_(
                d.enrollment_id == c.enrollment_id,
                d.status == DeliveryStatus.SENT,
                d.variant.is_not(None),
                d.sent_at <= c.converted_at,
            ),
        )
        .join(TOUCHPOINTS, t.id == d.touchpoint_id)
        .where(c.template_id == template_id)
        .group_by(d.version_id, t.name, d.variant)
    ).all():
        touched_variant[(version_id, name, variant)] += n

    funnel: list[FunnelStep] = []
    variant_rows: list[FunnelStep] = []
    for (version_id, name), position in sorted(steps.items(), key=lambda i: (i[0][0], i[1])):
        variants = sorted(
            var for (vid, n, var) in reached if vid == version_id and n == name and var
        )
        total_reached = sum(
            n for (vid, nm, _), n in reached.items() if vid == version_id and nm == name
        )
        totals = {"people": 0, "clicks": 0, "repeat": 0, "bot": 0}
        for (vid, nm, _), figures in clicks.items():
            if vid == version_id and nm == name:
                for key in totals:
                    totals[key] += figures[key]
        funnel.append(
            _step(
                numbers.get(version_id, 0),
                position,
                name,
                None,
                total_reached,
                totals,
                touched[(version_id, name)],
                sum(
                    n for (vid, nm, _), n in attributed.items() if vid == version_id and nm == name
                ),
            )
        )
        for variant in variants:
            variant_rows.append(
                _step(
                    numbers.get(version_id, 0),
                    position,
                    name,
                    variant,
                    reached[(version_id, name, variant)],
                    clicks.get(
                        (version_id, name, variant),
                        {"people": 0, "clicks": 0, "repeat": 0, "bot": 0},
                    ),
                    touched_variant[(version_id, name, variant)],
                    attributed[(version_id, name, variant)],
                )
            )
    comparisons = []
    by_step: dict[tuple[int, str], list[FunnelStep]] = defaultdict(list)
    for step in variant_rows:
        by_step[(step.version, step.touchpoint)].append(step)
    for (_version, _name), rows in by_step.items():
        base = rows[0]
        for other in rows[1:]:
            comparisons.append(
                compare(
                    f"{base.touchpoint} · {base.variant}",
                    base.converted,
                    base.reached,
                    f"{other.touchpoint} · {other.variant}",
                    other.converted,
                    other.reached,
                )
            )
    return OutcomeReport(
        template_id=template_id,
        has_goal=bool(goal_versions),
        versions=versions,
        funnel=funnel,
        variants=variant_rows,
        comparisons=comparisons,
    )


def _step(
    version: int,
    position: int,
    name: str,
    variant: str | None,
    reached: int,
    clicks: dict[str, int],
    converted: int,
    attributed: int,
) -> FunnelStep:
    return FunnelStep(
        version=version,
        position=position,
        touchpoint=name,
        variant=variant,
        reached=reached,
        clicked=clicks["people"],
        clicks=clicks["clicks"],
        repeat_clicks=clicks["repeat"],
        bot_clicks=clicks["bot"],
        converted=converted,
        attributed=attributed,
        conversion_rate=round(converted / reached, 4) if reached else 0.0,
    )


CSV_COLUMNS = (
    "version",
    "position",
    "touchpoint",
    "variant",
    "reached",
    "clicked",
    "clicks",
    "repeat_clicks",
    "bot_clicks",
    "converted",
    "attributed",
    "conversion_rate",
)


def funnel_csv(outcome: OutcomeReport) -> str:
    """The funnel (all variants, then each variant) as CSV, UTF-8 with a BOM
    so spreadsheet programs read the Chinese names."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in [*outcome.funnel, *outcome.variants]:
        values: dict[str, Any] = row.model_dump()
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return out.getvalue()
