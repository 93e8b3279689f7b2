"""The settled part of the statistics: what the rollups cover (the watermark)
and the read of the rollups themselves (see ``scheduler.analytics.retention``,
which fills them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import (
    Text,
    case,
    cast,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.analytics.models import (
    DeliveryAccountRollup,
    DeliveryDailyRollup,
    DeliveryRollupHold,
    DeliveryRollupState,
)
from scheduler.analytics.stats.figures import Fact, Part, StatsFilter
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES
from sopbot.sql import unindexed

ROLLUPS = DeliveryDailyRollup.__table__  # type: ignore[attr-defined]
ACCOUNT_ROLLUPS = DeliveryAccountRollup.__table__  # type: ignore[attr-defined]
HOLDS = DeliveryRollupHold.__table__  # type: ignore[attr-defined]
STATE = DeliveryRollupState.__table__  # type: ignore[attr-defined]
S = DeliveryStatus


# -- the watermark --------------------------------------------------------------------


@dataclass(frozen=True)
class Watermark:
    """What the rollups cover: ``id <= max_id AND due_at < before`` minus the
    held-back ids. ``before`` is None until the first roll-up: all is live."""

    max_id: int = 0
    before: datetime | None = None

    def live_parts(self, sqlite: bool) -> list[tuple[list[Any], bool]]:
        """Three disjoint sets of predicates whose union is the live part, each
        with whether it is read by id (rows added since the roll-up, held rows)
        rather than by due time."""
        if self.before is None:
            return [([], False)]
        return [
            ([DELIVERIES.c.id > self.max_id], True),
            (
                [
                    unindexed(DELIVERIES.c.id, sqlite) <= self.max_id,
                    DELIVERIES.c.due_at >= self.before,
                ],
                False,
            ),
            (
                [
                    DELIVERIES.c.id.in_(select(HOLDS.c.delivery_id)),
                    unindexed(DELIVERIES.c.id, sqlite) <= self.max_id,
                    unindexed(DELIVERIES.c.due_at, sqlite) < self.before,
                ],
                True,
            ),
        ]


def read_watermark(conn: Connection | Session) -> Watermark:
    row = conn.execute(
        select(STATE.c.settled_max_id, STATE.c.settled_before).where(STATE.c.id == 1)
    ).first()
    return Watermark() if row is None else Watermark(int(row[0]), row[1])


def read_settled(session: Session, flt: StatsFilter, zone: tzinfo) -> Part:
    """The settled part, from the rollups (settled deliveries are all due:
    ``due_at < settled_before <= now``)."""
    out = Part()
    r = ROLLUPS.c
    total = func.sum(r.deliveries)
    keys = (r.version_id, r.touchpoint_id, r.channel, r.status, r.reason)
    # Each group's lateness histograms come along as their JSON texts joined by
    # commas, added up in Python: SQL would have to sort every (bucket, count)
    # pair of thousands of small objects to group them, several times slower.
    sent = case((r.late_count > 0, cast(r.late_histogram, Text)))
    where = flt.rollup_conditions(ROLLUPS, zone)
    for v, tp, ch, st, rs, n, late_n, late_sum, late_max, histograms in session.execute(
        select(
            *keys,
            total,
            func.sum(r.late_count),
            func.sum(r.late_sum_ms),
            func.max(r.late_max_ms),
            func.aggregate_strings(sent, ","),
        )
        .where(*where)
        .group_by(*keys)
    ).all():
        out.facts.append(
            Fact(
                v,
                tp,
                ch,
                st,
                rs,
                int(n),
                int(n),
                int(late_n),
                int(late_sum),
                None if late_max is None else int(late_max),
            )
        )
        if histograms:
            add_histograms(out.histograms[tp], histograms)
    # Per hour, a column per status: grouped in the order of the (template_id,
    # hour_start) index, so without a sort. Rollups hold terminal statuses only.
    per_status = [func.sum(case((r.status == status, r.deliveries))) for status in S.TERMINAL]
    for start, *counts in session.execute(
        select(r.hour_start, *per_status).where(*where).group_by(r.hour_start)
    ):
        out.hours[int(start.timestamp()) // 3600] = {
            s: int(n) for s, n in zip(S.TERMINAL, counts, strict=True) if n
        }
    a = ACCOUNT_ROLLUPS.c
    out.accounts = [
        (account_id, status, int(n), int(n))
        for account_id, status, n in session.execute(
            select(a.account_id, a.status, func.sum(a.deliveries))
            .where(*flt.rollup_conditions(ACCOUNT_ROLLUPS, zone))
            .group_by(a.account_id, a.status)
        ).all()
    ]
    return out


_NOT_IN_PAIRS = str.maketrans("", "", '{}" \t\r\n')


def add_histograms(into: Counter[int], texts: str) -> None:
    """Add lateness histograms, flat JSON objects ``{"<bucket ms>": count, ...}``
    given as their texts joined by commas, to ``into``. Read as ``bucket:count``
    pairs, identical pairs counted first (in C, by ``Counter``): the histograms of
    one touchpoint share most of their pairs, so few are left to convert."""
    for pair, times in Counter(texts.translate(_NOT_IN_PAIRS).split(",")).items():
        bucket, colon, count = pair.partition(":")
        if colon:  # not an empty histogram ("{}") or JSON null
            into[int(bucket)] += int(count) * times
