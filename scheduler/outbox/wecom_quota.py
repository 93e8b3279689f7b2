"""WeCom's mass-send quota, as WeCom counts it.

WeCom limits mass messages per **customer** (external_userid) and per customer
group (chat_id), whichever staff member or task sends them: by default one a
day for each day of the month, which the admin may tighten to 7 a week or 1 a
day (developer.work.weixin.qq.com/document/path/92135). A customer who is a
friend of two staff members is two contacts in sopbot but one quota in WeCom.

A WeCom channel declares its admin's preset (``mass_send_quota``); task-mode
deliveries on it are counted per external id across contacts, staff members
and templates, in the transaction that marks them ``sending`` (the dispatcher
calls :func:`apply`). Over quota, a delivery is deferred to the next window
(past its grace period it is missed), with the reason. WeCom's own answer
remains the last word: a task result saying the customer already received a
mass message is recorded ``skipped`` (``scheduler.outbox.tasks``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, text
from sqlmodel import Session

from audiences.models import Contact, GroupChat
from scheduler.outbox import policies
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, chunked
from scheduler.outbox.transitions import Outcome

S = DeliveryStatus
ZONE = ZoneInfo("Asia/Shanghai")  # WeCom counts days in China time

PRESETS: dict[str, policies.FrequencyCap] = {
    "days_of_month": policies.FrequencyCap("days_of_month", "month", 0),
    "7_per_week": policies.FrequencyCap("7_per_week", "week", 7),
    "1_per_day": policies.FrequencyCap("1_per_day", "day", 1),
}
_LOCK_NAMESPACE = 0x5E0C << 40


@dataclass(frozen=True)
class QuotaCheck:
    """A claimed task-mode delivery on a WeCom channel with a quota preset."""

    target_kind: str  # contact / group
    external_id: str
    preset: str
    quiet: policies.QuietHours | None
    grace: timedelta
    expires_at: datetime


def check_for(
    adapter: Any, row: Any, external_id: str, quiet: Any, grace: timedelta
) -> QuotaCheck | None:
    """The quota check of one claimed row, or None when the quota does not apply."""
    if row.mode != "task" or getattr(adapter, "name", None) != "wecom":
        return None
    preset = getattr(adapter.config, "mass_send_quota", None)
    if preset not in PRESETS:
        return None
    return QuotaCheck(row.target_kind, external_id, preset, quiet, grace, row.expires_at)


def apply(session: Session, checks: dict[int, QuotaCheck], now: datetime) -> dict[int, Outcome]:
    """Decide every check (earliest claimed first); the outcomes of those held back."""
    keys = sorted({(c.target_kind, c.external_id) for c in checks.values()})
    _lock(session, keys)
    since = min(PRESETS[c.preset].lookback(now, ZONE) for c in checks.values())
    counted = _mass_sends(session, keys, since, now)
    held: dict[int, Outcome] = {}
    for delivery_id, check in checks.items():
        key = (check.target_kind, check.external_id)
        cap = PRESETS[check.preset]
        decision = cap.decide(now, ZONE, counted[key])
        if decision.action == "send":
            counted[key].append(now)
            continue
        who = "customer" if check.target_kind == "contact" else "customer group"
        reason = f"WeCom mass-send quota ({who} {check.external_id}): {decision.reason}"
        until = decision.until
        if until is not None and check.quiet is not None:
            until = check.quiet.window_end(until, ZONE) or until  # not into the night
        if until is None:
            held[delivery_id] = Outcome(S.SKIPPED, reason)
        else:
            held[delivery_id] = Outcome(
                S.SCHEDULED,
                reason,
                run_at=until,
                expires_at=max(check.expires_at, until + check.grace),
            )
    return held


def _mass_sends(
    session: Session, keys: list[tuple[str, str]], since: datetime, now: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """Task-mode sends to each external id since ``since`` (in-flight ones as ``now``),
    across every contact (staff member) carrying it."""
    out: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    d = DELIVERIES.c
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, external in keys:
        by_kind[kind].append(external)
    for kind, externals in by_kind.items():
        model: Any = Contact if kind == "contact" else GroupChat
        table = model.__table__
        for chunk in chunked(externals, 900):
            rows = session.execute(
                select(table.c.external_id, d.status, d.sent_at)
                .select_from(DELIVERIES.join(table, table.c.id == d.target_id))
                .where(
                    d.target_kind == kind,
                    # task mode, or a welcome that fell back to a task (it has a task id)
                    (d.mode == "task")
                    | ((d.mode == "welcome") & d.provider_message_id.is_not(None)),
                    table.c.external_id.in_(list(chunk)),
                    (d.status == S.SENDING) | ((d.status == S.SENT) & (d.sent_at >= since)),
                )
            ).all()
            for external, status, sent_at in rows:
                out[(kind, external)].append(now if status == S.SENDING else sent_at)
    return out


def _lock(session: Session, keys: list[tuple[str, str]]) -> None:
    """Serialise decisions per external id between workers (PostgreSQL; SQLite's
    write transaction is already exclusive), in key order against deadlocks."""
    if not keys or session.get_bind().dialect.name != "postgresql":
        return
    ids = sorted(
        {
            _LOCK_NAMESPACE
            + int.from_bytes(hashlib.sha256(f"{k}:{e}".encode()).digest()[:5], "big")
            for k, e in keys
        }
    )
    stmt = text(
        "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"
    ).bindparams(bindparam("keys"))
    session.execute(stmt, {"keys": ids})
