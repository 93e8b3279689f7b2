"""The live part of the statistics: every delivery the rollups do not cover,
aggregated from ``deliveries`` in one statement."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    String,
    case,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlmodel import Session

from audiences.tables import owner_account, target_table
from scheduler.analytics.stats.figures import (
    Fact,
    Part,
    hour_number,
    lateness_bucket_sql,
    lateness_ms,
)
from scheduler.analytics.stats.settled import Watermark
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES

S = DeliveryStatus


_LIVE_COLUMNS = (
    DELIVERIES.c.id,
    DELIVERIES.c.template_id,
    DELIVERIES.c.version_id,
    DELIVERIES.c.touchpoint_id,
    DELIVERIES.c.channel,
    DELIVERIES.c.status,
    DELIVERIES.c.reason,
    DELIVERIES.c.due_at,
    DELIVERIES.c.sent_at,
    DELIVERIES.c.target_kind,
    DELIVERIES.c.target_id,
)


def sent_lateness_ms(dialect: str) -> Any:
    """``lateness_ms`` of a sent delivery, NULL for any other."""
    return case(
        (
            DELIVERIES.c.status == S.SENT,
            lateness_ms(DELIVERIES.c.sent_at, DELIVERIES.c.due_at, dialect),
        )
    )


def live_rows(mark: Watermark, dialect: str, conditions: Callable[[bool], list[Any]]) -> Any:
    """The live deliveries matching ``conditions(by_id)``, with their lateness,
    as a materialized CTE: computed once per statement, not once per reference
    (SQLite would otherwise inline the lateness expression everywhere)."""
    late = sent_lateness_ms(dialect).label("late_ms")
    parts = [
        select(*_LIVE_COLUMNS, late).where(*conditions(by_id), *extra)
        for extra, by_id in mark.live_parts(dialect == "sqlite")
    ]
    rows = parts[0] if len(parts) == 1 else union_all(*parts)
    return rows.cte("live").prefix_with("MATERIALIZED")


# The columns of the live read. Each of its UNION ALL arms fills the ones it groups
# by and leaves the rest NULL, typed, so PostgreSQL can match the arms up.
_LIVE_SHAPE: dict[str, Any] = {
    "version_id": BigInteger,
    "touchpoint_id": BigInteger,
    "channel": String,
    "status": String,
    "reason": String,
    "late_bucket": BigInteger,
    "hour": BigInteger,
    "account_id": BigInteger,
    "deliveries": BigInteger,
    "due": BigInteger,
    "late_count": BigInteger,
    "late_sum_ms": BigInteger,
    "late_max_ms": BigInteger,
}


def _arm(part: str, **columns: Any) -> Select[Any]:
    """A SELECT in the shape of ``_LIVE_SHAPE``, tagged ``part``."""
    return select(
        literal(part, String).label("part"),
        *(
            (columns[name] if name in columns else cast(null(), type_)).label(name)
            for name, type_ in _LIVE_SHAPE.items()
        ),
    )


def read_live(session: Session, live: Any, dialect: str, target_kind: str, now: datetime) -> Part:
    """The live part in one statement: three GROUP BYs of the live CTE joined by
    UNION ALL, so the CTE (the read of ``deliveries``) is computed once, not once
    per breakdown. The facts are split by lateness bucket as well, which gives the
    histograms with them (only sent rows have a bucket; every figure of a fact is
    a sum or a maximum, so the split adds up to the same tallies)."""
    late, status = live.c.late_ms, live.c.status
    bucket = lateness_bucket_sql(late)
    hour = hour_number(live.c.due_at, dialect)
    targets, account = target_table(target_kind), owner_account(target_kind)
    due = func.sum(case((live.c.due_at <= now, 1), else_=0))
    keys = (live.c.version_id, live.c.touchpoint_id, live.c.channel, status, live.c.reason)
    facts = _arm(
        "fact",
        **{key.name: key for key in keys},
        late_bucket=bucket,
        deliveries=func.count(),
        due=due,
        late_count=func.count(late),
        late_sum_ms=func.sum(late),
        late_max_ms=func.max(late),
    ).group_by(*keys, bucket)
    hours = _arm("hour", hour=hour, status=status, deliveries=func.count()).group_by(hour, status)
    # Each live row's account by a lookup of its target's primary key. A join
    # lets PostgreSQL hash the whole contacts table instead (all 200,000 of
    # them, for a few thousand live rows): a cost that grows with the audience.
    owner = (
        select(account)
        .where(targets.c.id == live.c.target_id, live.c.target_kind == target_kind)
        .scalar_subquery()
    )
    owned = select(owner.label("account_id"), status, live.c.due_at).subquery("owned")
    accounts = (
        _arm(
            "account",
            account_id=owned.c.account_id,
            status=owned.c.status,
            deliveries=func.count(),
            due=func.sum(case((owned.c.due_at <= now, 1), else_=0)),
        )
        .select_from(owned)
        .group_by(owned.c.account_id, owned.c.status)
    )
    out = Part()
    for row in session.execute(union_all(facts, hours, accounts)).all():
        if row.part == "fact":
            fact = Fact(
                row.version_id,
                row.touchpoint_id,
                row.channel,
                row.status,
                row.reason,
                int(row.deliveries),
                int(row.due),
                int(row.late_count),
                int(row.late_sum_ms or 0),
                None if row.late_max_ms is None else int(row.late_max_ms),
            )
            out.facts.append(fact)
            if row.late_bucket is not None:
                out.histograms[fact.touchpoint_id][int(row.late_bucket)] += fact.late_count
        elif row.part == "hour":
            out.hours.setdefault(int(row.hour), {})[row.status] = int(row.deliveries)
        else:
            out.accounts.append((row.account_id, row.status, int(row.deliveries), int(row.due)))
    return out
