"""What the delivery log shows: its filters, sorts and the instants typed into
them, checked before any SQL is built (``InvalidLogQuery`` names the parameter).

On SQLite the indexed filters other than the sort column are written ``+column``
(see ``sopbot.sql.unindexed``) so its planner keeps the ordered scan of the sort
column's index instead of trading it for, say, an index on status followed by a
sort of every matching row; PostgreSQL plans from statistics and gets plain
predicates. A contact or group filter goes through its enrollments (a handful of
rows) instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sqlalchemy import ColumnElement, and_, exists, or_, select

from audiences.tables import (
    LINK_CLICKS,
    TAG_ASSIGNMENTS,
    TAGS,
    TARGET_KINDS,
    owner_account,
    target_table,
)
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, ENROLLMENTS
from scheduler.outcomes.models import Conversion
from sopbot.sql import unindexed

SORTS = ("due_at", "sent_at")
ORDERS = ("desc", "asc")
MAX_PAGE = 1000
MAX_ID = 2**63 - 1  # ids are 64-bit: larger numbers cannot name a row
CONVERSIONS = Conversion.__table__  # type: ignore[attr-defined]


class InvalidLogQuery(ValueError):
    """A log filter, sort or cursor that cannot be used; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# -- filters ------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """What to show. Every field is optional; set ones combine with AND.

    Time ranges are half-open, ``[from, to)``, aware datetimes. ``statuses`` may
    hold several. ``reason`` matches a case-insensitive substring. ``tag`` is a tag
    name: deliveries whose target carries it now. ``account_id`` is the staff
    account that owns the target (the contact's account, the group's owner).
    """

    template_id: int | None = None
    version_id: int | None = None
    touchpoint_id: int | None = None
    statuses: tuple[str, ...] = ()
    reason: str | None = None
    channel: str | None = None
    account_id: int | None = None
    contact_id: int | None = None
    group_id: int | None = None
    tag: str | None = None
    due_from: datetime | None = None
    due_to: datetime | None = None
    sent_from: datetime | None = None
    sent_to: datetime | None = None
    clicked: bool | None = None  # a person clicked one of its tracked links (已点击)
    converted: bool | None = None  # its enrollment converted, attributed to it (已转化)

    def __post_init__(self) -> None:
        unknown = [s for s in self.statuses if s not in DeliveryStatus.ALL]
        if unknown:
            raise InvalidLogQuery(
                "status",
                f"status {', '.join(map(repr, unknown))} is not one of: "
                + ", ".join(DeliveryStatus.ALL),
            )
        for lo, hi in (("due_from", "due_to"), ("sent_from", "sent_to")):
            start, end = getattr(self, lo), getattr(self, hi)
            for name, value in ((lo, start), (hi, end)):
                if value is not None and value.tzinfo is None:
                    raise InvalidLogQuery(name, f"{name} needs a time zone")
            if start is not None and end is not None and end <= start:
                raise InvalidLogQuery(
                    hi, f"{hi} ({end.isoformat()}) must be after {lo} ({start.isoformat()})"
                )
        if self.contact_id is not None and self.group_id is not None:
            raise InvalidLogQuery("group_id", "filter by contact_id or by group_id, not both")

    def conditions(self, *, sqlite: bool, sort: str) -> list[ColumnElement[bool]]:
        """SQL predicates on ``deliveries`` for these filters, for a read in
        ``sort`` order (see the module docstring for the columns SQLite gets as
        ``+column``)."""
        where: list[ColumnElement[bool]] = []
        if self.template_id is not None:
            # (template_id, due_at, id) is itself an index in due order
            keep = sort == "due_at"
            where.append(
                unindexed(DELIVERIES.c.template_id, sqlite and not keep) == self.template_id
            )
        if self.version_id is not None:
            where.append(unindexed(DELIVERIES.c.version_id, sqlite) == self.version_id)
        if self.touchpoint_id is not None:
            where.append(unindexed(DELIVERIES.c.touchpoint_id, sqlite) == self.touchpoint_id)
        if self.statuses:
            where.append(unindexed(DELIVERIES.c.status, sqlite).in_(self.statuses))
        if self.reason:
            where.append(DELIVERIES.c.reason.icontains(self.reason, autoescape=True))
        if self.channel is not None:
            where.append(DELIVERIES.c.channel == self.channel)
        if self.account_id is not None:
            where.append(
                or_(
                    *(
                        and_(
                            DELIVERIES.c.target_kind == kind,
                            DELIVERIES.c.target_id.in_(
                                select(target_table(kind).c.id).where(
                                    owner_account(kind) == self.account_id
                                )
                            ),
                        )
                        for kind in TARGET_KINDS
                    )
                )
            )
        for kind, target_id in (("contact", self.contact_id), ("group", self.group_id)):
            if target_id is not None:
                where += [
                    DELIVERIES.c.target_kind == kind,
                    DELIVERIES.c.target_id == target_id,
                    DELIVERIES.c.enrollment_id.in_(
                        select(ENROLLMENTS.c.id).where(
                            ENROLLMENTS.c.target_kind == kind, ENROLLMENTS.c.target_id == target_id
                        )
                    ),
                ]
        if self.tag is not None:
            where.append(
                exists().where(
                    TAG_ASSIGNMENTS.c.tag_id == TAGS.c.id,
                    TAGS.c.name == self.tag,
                    TAG_ASSIGNMENTS.c.target_kind == DELIVERIES.c.target_kind,
                    TAG_ASSIGNMENTS.c.target_id == DELIVERIES.c.target_id,
                )
            )
        if self.due_from is not None:
            where.append(DELIVERIES.c.due_at >= self.due_from)
        if self.due_to is not None:
            where.append(DELIVERIES.c.due_at < self.due_to)
        if self.sent_from is not None:
            where.append(DELIVERIES.c.sent_at >= self.sent_from)
        if self.sent_to is not None:
            where.append(DELIVERIES.c.sent_at < self.sent_to)
        if self.clicked is not None:
            clicked = exists().where(
                LINK_CLICKS.c.delivery_id == DELIVERIES.c.id, LINK_CLICKS.c.bot.is_(False)
            )
            where.append(clicked if self.clicked else ~clicked)
        if self.converted is not None:
            converted = exists().where(CONVERSIONS.c.delivery_id == DELIVERIES.c.id)
            where.append(converted if self.converted else ~converted)
        return where


_OFFSET = re.compile(r"\d{2}:?\d{2}")


def parse_instant(
    value: str | None, zone: tzinfo, param: str, *, end: bool = False
) -> datetime | None:
    """An ISO 8601 instant from a query string. Without an offset it is read in
    ``zone`` (the workspace zone: what an operator typed in the UI). A bare date
    means that day's start — or, with ``end``, the next day's start, so
    ``due_to=2027-03-02`` includes all of 2 March."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    head, space, tail = text.rpartition(" ")
    if space and _OFFSET.fullmatch(tail) and ("T" in head or " " in head):
        text = f"{head}+{tail}"  # a "+08:00" that arrived unencoded in a URL
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            parsed = datetime.combine(day + timedelta(days=1) if end else day, time())
        else:
            parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise InvalidLogQuery(
            param, f"{param} {value!r} is not an ISO 8601 date or date-time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def check_sort(sort: str, order: str) -> None:
    """Raise InvalidLogQuery naming ``sort`` or ``order`` if either is unknown."""
    if sort not in SORTS:
        raise InvalidLogQuery("sort", f"sort {sort!r} is not one of: {', '.join(SORTS)}")
    if order not in ORDERS:
        raise InvalidLogQuery("order", f"order {order!r} is not one of: {', '.join(ORDERS)}")
