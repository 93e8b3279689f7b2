"""Execution analytics: who did what, on time (执行率 / 完成率 / 准时率).

Counted from the staff tasks (``scheduler.staff``) and their deliveries' status,
per SOP, per step and per staff member:

- assigned (分配): every task handed to a staff member;
- done (已执行), and done on time (before its deadline: 准时执行);
- skipped by the staff member (已跳过), per reason;
- missed (已逾期): the deadline passed;
- open (待执行) and cancelled (template archived, contact left).

Completion rate (完成率) = done / assigned; on-time rate (准时率) = done on time /
assigned. Staff members are ranked by completion, then on-time rate.

Mass-send tasks (task mode) fit the same view: a task the staff member
confirmed counts as done (on time when confirmed within the step's grace
period), one nobody confirmed in time as missed, one the platform refused
as failed; they are counted for the customer's owning account.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, case, func, null, select
from sqlmodel import Session, col

from audiences.models import Account, Contact, GroupChat
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.staff.models import StaffTask
from sop_templates.models import SopTemplate, Touchpoint

S = DeliveryStatus
CONFIRMED_PREFIX = "confirmed by staff"  # scheduler.outbox.tasks: a confirmed mass send


@dataclass(frozen=True)
class ExecutionFilter:
    """Tasks assigned on local dates ``date_from``..``date_to`` (inclusive, in
    the workspace zone), of one template and/or one staff account."""

    date_from: date | None = None
    date_to: date | None = None
    template_id: int | None = None
    account_id: int | None = None

    def bounds(self, zone: tzinfo) -> tuple[datetime | None, datetime | None]:
        start = datetime.combine(self.date_from, time(), zone) if self.date_from else None
        end = (
            datetime.combine(self.date_to + timedelta(days=1), time(), zone)
            if self.date_to
            else None
        )
        return start, end


@dataclass
class ExecutionRow:
    template_id: int | None = None
    template_name: str = ""
    step: str = ""
    account_id: int | None = None
    account_name: str = ""
    assigned: int = 0
    open: int = 0
    done: int = 0
    done_on_time: int = 0
    skipped: int = 0
    missed: int = 0
    failed: int = 0
    cancelled: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def completion_rate(self) -> float | None:
        return round(self.done / self.assigned, 4) if self.assigned else None

    @property
    def on_time_rate(self) -> float | None:
        return round(self.done_on_time / self.assigned, 4) if self.assigned else None

    def add(self, outcome: str, on_time: bool, reason: str | None, n: int) -> None:
        self.assigned += n
        if outcome == S.DONE:
            self.done += n
            self.done_on_time += n if on_time else 0
        elif outcome == S.SKIPPED_BY_STAFF:
            self.skipped += n
            self.skip_reasons[reason or ""] += n
        elif outcome == S.MISSED:
            self.missed += n
        elif outcome == S.CANCELLED:
            self.cancelled += n
        elif outcome == S.FAILED:
            self.failed += n
        else:
            self.open += n

    def as_dict(self) -> dict[str, Any]:
        return {
            "template_id": self.template_id,
            "template_name": self.template_name,
            "step": self.step,
            "account_id": self.account_id,
            "account_name": self.account_name,
            "assigned": self.assigned,
            "open": self.open,
            "done": self.done,
            "done_on_time": self.done_on_time,
            "skipped": self.skipped,
            "missed": self.missed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "completion_rate": self.completion_rate,
            "on_time_rate": self.on_time_rate,
            "skip_reasons": [{"reason": r, "count": n} for r, n in self.skip_reasons.most_common()],
        }


@dataclass
class ExecutionReport:
    total: ExecutionRow
    by_template: list[ExecutionRow]
    by_step: list[ExecutionRow]
    by_account: list[ExecutionRow]  # the ranking

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total.as_dict(),
            "by_template": [r.as_dict() for r in self.by_template],
            "by_step": [r.as_dict() for r in self.by_step],
            "by_account": [r.as_dict() for r in self.by_account],
        }


# (template id, step, account id, outcome, on time, skip reason) → tasks
Fact = tuple[int, str, int | None, str, bool, str | None, int]


def _staff_facts(
    session: Session, flt: ExecutionFilter, start: datetime | None, end: datetime | None
) -> list[Fact]:
    on_time = func.coalesce(StaffTask.on_time, False)
    stmt = (
        select(
            StaffTask.template_id,  # type: ignore[call-overload]
            Touchpoint.name,
            StaffTask.account_id,
            Delivery.status,
            on_time,
            StaffTask.skip_reason,
            func.count(),
        )
        .join(Delivery, col(Delivery.id) == col(StaffTask.delivery_id))
        .join(Touchpoint, col(Touchpoint.id) == col(StaffTask.touchpoint_id))
        .group_by(
            StaffTask.template_id,
            Touchpoint.name,
            StaffTask.account_id,
            Delivery.status,
            on_time,
            StaffTask.skip_reason,
        )
    )
    if start is not None:
        stmt = stmt.where(col(StaffTask.assigned_at) >= start)
    if end is not None:
        stmt = stmt.where(col(StaffTask.assigned_at) < end)
    if flt.template_id is not None:
        stmt = stmt.where(col(StaffTask.template_id) == flt.template_id)
    if flt.account_id is not None:
        stmt = stmt.where(col(StaffTask.account_id) == flt.account_id)
    return [tuple(r) for r in session.execute(stmt).all()]  # type: ignore[misc]


def _task_mode_facts(
    session: Session, flt: ExecutionFilter, start: datetime | None, end: datetime | None
) -> list[Fact]:
    """Mass-send (task mode) deliveries the platform handed to a staff member."""
    account = func.coalesce(Contact.account_id, GroupChat.owner_account_id)
    confirmed = and_(
        col(Delivery.status) == S.SENT, col(Delivery.reason).like(CONFIRMED_PREFIX + "%")
    )
    outcome = case(
        (confirmed, S.DONE),
        (col(Delivery.status) == S.UNKNOWN, S.MISSED),
        (col(Delivery.status) == S.FAILED, S.FAILED),
        (col(Delivery.status) == S.CANCELLED, S.CANCELLED),
        else_=S.AWAITING_STAFF,
    )
    on_time = case(
        (and_(confirmed, col(Delivery.sent_at) <= col(Delivery.expires_at)), True), else_=False
    )
    stmt = (
        select(
            Delivery.template_id,  # type: ignore[call-overload]
            Touchpoint.name,
            account,
            outcome,
            on_time,
            null(),
            func.count(),
        )
        .join(Touchpoint, col(Touchpoint.id) == col(Delivery.touchpoint_id))
        .outerjoin(
            Contact,
            and_(col(Delivery.target_kind) == "contact", col(Contact.id) == Delivery.target_id),
        )
        .outerjoin(
            GroupChat,
            and_(col(Delivery.target_kind) == "group", col(GroupChat.id) == Delivery.target_id),
        )
        .where(
            col(Delivery.mode) == "task",
            col(Delivery.status).in_([S.SENT, S.FAILED, S.UNKNOWN]),
            col(Delivery.provider_message_id).is_not(None),
        )
        .group_by(Delivery.template_id, Touchpoint.name, account, outcome, on_time)
    )
    if start is not None:
        stmt = stmt.where(col(Delivery.due_at) >= start)
    if end is not None:
        stmt = stmt.where(col(Delivery.due_at) < end)
    if flt.template_id is not None:
        stmt = stmt.where(col(Delivery.template_id) == flt.template_id)
    if flt.account_id is not None:
        stmt = stmt.where(account == flt.account_id)
    return [tuple(r) for r in session.execute(stmt).all()]  # type: ignore[misc]


def execution_report(session: Session, flt: ExecutionFilter, zone: tzinfo) -> ExecutionReport:
    """Per SOP, step and staff member: assigned, done (on time), skipped (by
    reason), missed; completion and on-time rates; staff ranked."""
    start, end = flt.bounds(zone)
    facts = _staff_facts(session, flt, start, end) + _task_mode_facts(session, flt, start, end)
    template_names: dict[int, str] = dict(
        session.execute(
            select(SopTemplate.id, SopTemplate.name).where(  # type: ignore[call-overload]
                col(SopTemplate.id).in_(sorted({f[0] for f in facts}) or [0])
            )
        ).all()
    )
    accounts = {
        a.id: a.name or a.external_id
        for a in session.execute(
            select(Account).where(
                col(Account.id).in_(sorted({f[2] for f in facts if f[2] is not None}) or [0])
            )
        ).scalars()
    }
    total = ExecutionRow(template_name="", step="")
    templates: dict[int, ExecutionRow] = {}
    steps: dict[tuple[int, str], ExecutionRow] = {}
    staff: dict[int | None, ExecutionRow] = {}
    for template_id, step, account_id, outcome, on_time, reason, n in facts:
        name = template_names.get(template_id, str(template_id))
        account_name = accounts.get(account_id, "") if account_id is not None else ""
        rows = (
            total,
            templates.setdefault(template_id, ExecutionRow(template_id, name)),
            steps.setdefault((template_id, step), ExecutionRow(template_id, name, step)),
            staff.setdefault(
                account_id, ExecutionRow(account_id=account_id, account_name=account_name)
            ),
        )
        for row in rows:
            row.add(outcome, bool(on_time), reason, int(n))
    ranking = sorted(
        staff.values(),
        key=lambda r: (-(r.completion_rate or 0), -(r.on_time_rate or 0), -r.done, r.account_name),
    )
    return ExecutionReport(
        total=total,
        by_template=sorted(templates.values(), key=lambda r: (r.template_name, r.template_id or 0)),
        by_step=sorted(steps.values(), key=lambda r: (r.template_name, r.template_id or 0, r.step)),
        by_account=ranking,
    )


CSV_HEADER = [
    "维度",
    "SOP",
    "步骤",
    "员工",
    "分配",
    "已执行",
    "准时执行",
    "已跳过",
    "已逾期",
    "待执行",
    "完成率",
    "准时率",
    "跳过原因",
]


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{rate * 100:.1f}%"


def to_csv(report: ExecutionReport) -> str:
    """The report as CSV (UTF-8 with BOM, so Excel opens the Chinese right)."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    sections = (
        ("合计", [report.total]),
        ("SOP", report.by_template),
        ("步骤", report.by_step),
        ("员工", report.by_account),
    )
    for label, rows in sections:
        for r in rows:
            writer.writerow(
                [
                    label,
                    r.template_name,
                    r.step,
                    r.account_name,
                    r.assigned,
                    r.done,
                    r.done_on_time,
                    r.skipped,
                    r.missed,
                    r.open,
                    _pct(r.completion_rate),
                    _pct(r.on_time_rate),
                    "；".join(f"{k}×{n}" for k, n in r.skip_reasons.most_common()),
                ]
            )
    return out.getvalue()
