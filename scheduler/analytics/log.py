"""The delivery log: filtered reads of the ``deliveries`` table with keyset
(cursor) pagination, and the same filters streamed out as CSV or NDJSON.

Keyset pagination orders by ``(sort key, id)`` and continues strictly after the
last row of the previous page, so a page deep into millions of rows costs what
the first one does, and rows inserted meanwhile never make a page skip or repeat
one. ``due_at`` never changes once a delivery exists, which is why it is the
default sort; ``sent_at`` is empty until a delivery is sent, so that sort lists
the sent rows first and then the unsent ones by id (NULLS LAST, both directions).

Query plans (SQLite, 2 million rows; see ``benchmarks/log.py``): the sort column's
index drives every page — ``ix_deliveries_due_at`` or, with a template filter,
``ix_deliveries_template_due_at``; ``ix_deliveries_sent_at`` (partial) for the
sent-time sort. On SQLite the other indexed filters are written ``+column`` so its
planner does not trade the ordered scan for an index on, say, status followed by
a sort of every matching row; PostgreSQL plans from statistics and gets plain
predicates. A contact or group filter goes through its enrollments (a handful of
rows) instead.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar, overload

from pydantic_core import to_json
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Text,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression
from sqlmodel import Session, col

from audiences.models import Account, Contact, GroupChat, Tag, TagAssignment
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment
from scheduler.outbox.repository import among
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint
from sopbot.db import is_sqlite, reader

D = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
CONTACTS = Contact.__table__  # type: ignore[attr-defined]
GROUPS = GroupChat.__table__  # type: ignore[attr-defined]
TAGS = Tag.__table__  # type: ignore[attr-defined]
TAG_ASSIGNMENTS = TagAssignment.__table__  # type: ignore[attr-defined]

SORTS = ("due_at", "sent_at")
ORDERS = ("desc", "asc")
MAX_PAGE = 1000
MAX_ID = 2**63 - 1  # ids are 64-bit: larger numbers cannot name a row
EXPORT_BATCH = 2000
EXPORT_PREFETCH = 2  # batches an export reads ahead of the one being written out
TARGET_MEMORY = 10_000  # targets an export remembers across batches (see _Labels._targets)

STATUS_ZH = {
    "scheduled": "待发送",
    "claimed": "已领取",
    "sending": "发送中",
    "sent": "已发送",
    "failed": "失败",
    "skipped": "已跳过",
    "cancelled": "已取消",
    "missed": "已错过",
    "unknown": "结果未知",
}
TARGET_ZH = {"contact": "客户", "group": "客户群"}
MODE_ZH = {"send": "自动发送", "task": "群发任务（员工确认）", "remind": "提醒员工发送"}
PART_ZH = {"image": "图片", "link": "链接", "miniprogram": "小程序", "file": "文件"}


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
            where.append(unindexed(D.c.template_id, sqlite and not keep) == self.template_id)
        if self.version_id is not None:
            where.append(unindexed(D.c.version_id, sqlite) == self.version_id)
        if self.touchpoint_id is not None:
            where.append(unindexed(D.c.touchpoint_id, sqlite) == self.touchpoint_id)
        if self.statuses:
            where.append(unindexed(D.c.status, sqlite).in_(self.statuses))
        if self.reason:
            where.append(D.c.reason.icontains(self.reason, autoescape=True))
        if self.channel is not None:
            where.append(D.c.channel == self.channel)
        if self.account_id is not None:
            where.append(
                or_(
                    and_(
                        D.c.target_kind == "contact",
                        D.c.target_id.in_(
                            select(CONTACTS.c.id).where(CONTACTS.c.account_id == self.account_id)
                        ),
                    ),
                    and_(
                        D.c.target_kind == "group",
                        D.c.target_id.in_(
                            select(GROUPS.c.id).where(GROUPS.c.owner_account_id == self.account_id)
                        ),
                    ),
                )
            )
        for kind, target_id in (("contact", self.contact_id), ("group", self.group_id)):
            if target_id is not None:
                where += [
                    D.c.target_kind == kind,
                    D.c.target_id == target_id,
                    D.c.enrollment_id.in_(
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
                    TAG_ASSIGNMENTS.c.target_kind == D.c.target_kind,
                    TAG_ASSIGNMENTS.c.target_id == D.c.target_id,
                )
            )
        if self.due_from is not None:
            where.append(D.c.due_at >= self.due_from)
        if self.due_to is not None:
            where.append(D.c.due_at < self.due_to)
        if self.sent_from is not None:
            where.append(D.c.sent_at >= self.sent_from)
        if self.sent_to is not None:
            where.append(D.c.sent_at < self.sent_to)
        return where


def unindexed(column: Any, sqlite: bool) -> Any:
    """On SQLite, ``+column``: the planner will not use an index on it, so the
    read stays driven by the index that gives the wanted order or range (a
    documented SQLite idiom). Elsewhere the column itself."""
    if not sqlite:
        return column
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


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


# -- cursors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row with this sort key and id."""

    sort: str
    order: str
    key: datetime | None
    id: int

    def encode(self) -> str:
        key = self.key.astimezone(UTC).isoformat() if self.key is not None else None
        raw = json.dumps([1, self.sort, self.order, key, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str, *, sort: str, order: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, c_sort, c_order, key, row_id = json.loads(raw)
            if version != 1 or not isinstance(row_id, int) or isinstance(row_id, bool):
                raise ValueError
            if not 0 <= row_id <= MAX_ID:
                raise ValueError
            parsed = None if key is None else datetime.fromisoformat(key)
            if parsed is not None and parsed.tzinfo is None:
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            ) from None
        if (c_sort, c_order) != (sort, order):
            raise InvalidLogQuery(
                "cursor",
                f"cursor belongs to sort={c_sort} order={c_order}, not sort={sort} order={order}",
            )
        if parsed is None and sort == "due_at":
            raise InvalidLogQuery(
                "cursor", "cursor is not one this API issued; start again without it"
            )
        return cls(c_sort, c_order, parsed, row_id)


# -- entries ------------------------------------------------------------------------


@dataclass(slots=True)
class LogEntry:
    """One line of the delivery log, with the names an operator reads."""

    id: int
    template_id: int
    template_name: str | None
    version_id: int
    version: int | None
    touchpoint_id: int
    touchpoint_name: str | None
    occurrence: int
    target_kind: str
    target_id: int
    target_external_id: str | None
    target_name: str | None
    account_id: int | None
    account_name: str | None
    channel: str
    mode: str
    status: str
    reason: str | None
    due_at: datetime
    run_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    lateness_seconds: float | None
    attempts: int
    provider_message_id: str | None
    rendered: list[dict[str, Any]] | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 in UTC (``Z``)."""
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        for key in ("due_at", "run_at", "sent_at", "finished_at"):
            value = out[key]
            if value is not None:
                out[key] = value.isoformat().replace("+00:00", "Z")
        return out


@dataclass
class LogPage:
    entries: list[LogEntry]
    next_cursor: str | None


def content_text(
    parts: Sequence[dict[str, Any]] | None, labels: Mapping[str, str] = PART_ZH
) -> str:
    """Rendered content as an operator reads it: text as is, other parts labelled
    (``labels``: a part kind's name, Chinese by default as in the CSV export)."""
    if not parts:
        return ""
    if len(parts) == 1 and parts[0].get("kind") == "text":
        return str(parts[0].get("text") or "")
    lines = []
    for part in parts:
        kind = part.get("kind")
        if kind == "text":
            lines.append(str(part.get("text") or ""))
            continue
        label = labels.get(str(kind), str(kind))
        details = [
            str(v)
            for v in (part.get("title"), part.get("name"), part.get("page"), part.get("url"))
            if v
        ]
        lines.append(f"[{label}] {' '.join(details)}" if details else f"[{label}]")
    return "\n".join(lines)


_COLUMNS = (
    D.c.id,
    D.c.template_id,
    D.c.version_id,
    D.c.touchpoint_id,
    D.c.occurrence,
    D.c.target_kind,
    D.c.target_id,
    D.c.channel,
    D.c.mode,
    D.c.status,
    D.c.reason,
    D.c.due_at,
    D.c.run_at,
    D.c.sent_at,
    D.c.finished_at,
    D.c.attempts,
    D.c.provider_message_id,
    D.c.rendered,
)
_RAW_ON_SQLITE = ("due_at", "run_at", "sent_at", "finished_at", "rendered")
# SQLite stores UTC times and JSON as text; reading them raw and converting them
# here is several times cheaper per value than the generic column types, which
# counts on an export (the CSV needs the stored time text, not even a datetime).
_SQLITE_COLUMNS = tuple(
    type_coerce(c, String).label(c.name) if c.name in _RAW_ON_SQLITE else c for c in _COLUMNS
)


def _pg_raw(column: Any) -> Any:
    # The same text as SQLite stores, made by the server: an export then formats
    # times from text instead of building a datetime per value in Python.
    if column.name == "rendered":
        return type_coerce(cast(column, Text), String).label(column.name)
    # timestamp::text is "YYYY-MM-DD HH:MM:SS[.ffffff]" (zeros of the fraction
    # dropped), which the readers of raw times accept; to_char costs more.
    utc_text = cast(func.timezone("UTC", column), Text)
    return type_coerce(utc_text, String).label(column.name)


_PG_RAW_COLUMNS = tuple(_pg_raw(c) if c.name in _RAW_ON_SQLITE else c for c in _COLUMNS)


_NOT_IN_CSV = ("version_id", "occurrence", "run_at")


def _columns(sqlite: bool, *, csv: bool = False, raw: bool | None = None) -> tuple[Any, ...]:
    """The columns read for log entries, or (``csv``) for CSV lines, which leave
    out a few (fewer values to convert on an export). ``raw`` (the default on
    SQLite; what exports ask for on PostgreSQL too) reads times and content as
    their UTC text and JSON text."""
    raw = sqlite if raw is None else raw
    columns = (_SQLITE_COLUMNS if sqlite else _PG_RAW_COLUMNS) if raw else _COLUMNS
    if csv:
        return tuple(c for c in columns if c.name not in _NOT_IN_CSV)
    return columns


@overload
def _utc(text: str) -> datetime: ...
@overload
def _utc(text: None) -> None: ...
def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text + "+00:00")


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads minus two Python frames per value


def _parts(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        try:
            return _scan_json(value, 0)[0]  # type: ignore[no-any-return]
        except StopIteration:  # not at a value: leading whitespace, say
            return json.loads(value)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]


def _seconds(later: Any, earlier: Any) -> float | None:
    """``later - earlier`` in seconds, from datetimes or SQLite's stored text."""
    if later is None:
        return None
    if isinstance(later, str):
        return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
    return float((later - earlier).total_seconds())


def _iso_utc(value: datetime | str | None) -> str | None:
    """An instant as ``LogEntry.as_json`` writes it (ISO 8601, UTC, ``Z``), from a
    datetime or SQLite's stored "YYYY-MM-DD HH:MM:SS.ffffff" UTC text, which is
    rearranged rather than parsed."""
    if value is None:
        return None
    if value.__class__ is str:
        text: str = value  # type: ignore[assignment]
        if len(text) == 26 and text[19] == ".":
            if text.endswith("000000"):  # isoformat() leaves out a zero fraction
                return f"{text[:10]}T{text[11:19]}Z"
            return f"{text[:10]}T{text[11:]}Z"
        value = _utc(text)
    return value.isoformat().replace("+00:00", "Z")  # type: ignore[union-attr]


def _json_line(entry: dict[str, Any]) -> bytes:
    """One NDJSON line, the bytes of ``json.dumps(entry, ensure_ascii=False,
    separators=(",", ":"))`` in UTF-8, from pydantic's JSON serializer (a
    fraction of the standard library encoder's time). The two write everything
    alike but floats below 1e-4 ("5e-05" against "0.00005"); the one float of an
    entry is its lateness (content parts hold strings), and such a lateness, rare
    as it is, goes through the standard library."""
    late = entry["lateness_seconds"]
    if late is not None and -1e-4 < late < 1e-4 and late:
        return _stdlib_json_line(entry).encode()
    return to_json(entry)


_stdlib_json_line = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_NO_TARGET: tuple[Any, Any, Any] = (None, None, None)
_NO_TOUCHPOINT: tuple[Any, Any] = (None, None)


_Targets = dict[tuple[str, int], tuple[Any, Any, Any]]  # (kind, id) -> (external id, name, account)
_Row = Row[*tuple[Any, ...]]  # a row of any number of columns (Row[Any] is one column)


class _Labels:
    """Names for ids, looked up once per batch of rows (templates, touchpoints
    and accounts are cached for the whole read: there are few of them; targets
    for recent batches, see ``_targets``)."""

    def __init__(
        self,
        conn: Connection | Session,
        *,
        sqlite: bool,
        csv: bool = False,
        raw: bool | None = None,
    ) -> None:
        self.conn = conn
        self.raw_times = sqlite if raw is None else raw
        # where the ids to look up are in the rows (see _columns)
        names = [c.name for c in _columns(sqlite, csv=csv, raw=raw)]
        self._template_at, self._touchpoint_at, self._kind_at, self._target_at = (
            names.index(name)
            for name in ("template_id", "touchpoint_id", "target_kind", "target_id")
        )
        self.templates: dict[int, str] = {}
        self.touchpoints: dict[int, tuple[str, int]] = {}
        self.accounts: dict[int, str] = {}
        self._recent_targets: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._older_targets: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        # CSV columns already written, by (template, touchpoint), by account and
        # by (target kind, channel, mode, status): few of each, kept for the read.
        self._csv_touchpoints: dict[tuple[int, int], str] = {}
        self._csv_accounts: dict[int | None, str] = {}
        self._csv_outcomes: dict[tuple[str, str, str, str], tuple[str, str]] = {}

    def prepare(self, rows: Sequence[_Row]) -> _Targets:
        """Load the names this batch needs; return its targets by (kind, id).
        This reads the database, and only it: the ``entries``, ``json_lines`` and
        ``csv_text`` of a prepared batch only read what it loaded (which is how
        an export reads the next batch while it writes this one out)."""
        template, touchpoint = self._template_at, self._touchpoint_at
        self._load_templates({r[template] for r in rows} - self.templates.keys())
        self._load_touchpoints({r[touchpoint] for r in rows} - self.touchpoints.keys())
        return self._targets(rows)

    def entries(self, rows: Sequence[_Row], targets: _Targets | None = None) -> list[LogEntry]:
        targets = self.prepare(rows) if targets is None else targets
        raw = self.raw_times
        accounts, templates, touchpoints = self.accounts, self.templates, self.touchpoints
        out = []
        for r in rows:
            # Tuple unpacking: much cheaper than attribute access per column.
            (
                row_id,
                template_id,
                version_id,
                touchpoint_id,
                occurrence,
                target_kind,
                target_id,
                channel,
                mode,
                status,
                reason,
                due_at,
                run_at,
                sent_at,
                finished_at,
                attempts,
                provider_message_id,
                rendered,
            ) = r
            external_id, name, account_id = targets.get((target_kind, target_id), _NO_TARGET)
            tp_name, version = touchpoints.get(touchpoint_id, _NO_TOUCHPOINT)
            out.append(
                LogEntry(
                    row_id,
                    template_id,
                    templates.get(template_id),
                    version_id,
                    version,
                    touchpoint_id,
                    tp_name,
                    occurrence,
                    target_kind,
                    target_id,
                    external_id,
                    name,
                    account_id,
                    accounts.get(account_id) if account_id is not None else None,
                    channel,
                    mode,
                    status,
                    reason,
                    _utc(due_at) if raw else due_at,
                    _utc(run_at) if raw else run_at,
                    _utc(sent_at) if raw else sent_at,
                    _utc(finished_at) if raw else finished_at,
                    _seconds(sent_at, due_at),
                    attempts,
                    provider_message_id,
                    _parts(rendered),
                )
            )
        return out

    def json_lines(self, rows: Sequence[_Row], targets: _Targets) -> bytes:
        """NDJSON lines of these rows, each ``LogEntry.as_json()`` of the row but
        built straight from it: the NDJSON export's hot loop, so no LogEntry, and
        on SQLite no datetime for a time that is only printed."""
        accounts, templates, touchpoints = self.accounts, self.templates, self.touchpoints
        encode, iso, seconds = _json_line, _iso_utc, _seconds
        out = []
        for (
            row_id,
            template_id,
            version_id,
            touchpoint_id,
            occurrence,
            target_kind,
            target_id,
            channel,
            mode,
            status,
            reason,
            due_at,
            run_at,
            sent_at,
            finished_at,
            attempts,
            provider_message_id,
            rendered,
        ) in rows:
            external_id, name, account_id = targets.get((target_kind, target_id), _NO_TARGET)
            tp_name, version = touchpoints.get(touchpoint_id, _NO_TOUCHPOINT)
            entry = {
                "id": row_id,
                "template_id": template_id,
                "template_name": templates.get(template_id),
                "version_id": version_id,
                "version": version,
                "touchpoint_id": touchpoint_id,
                "touchpoint_name": tp_name,
                "occurrence": occurrence,
                "target_kind": target_kind,
                "target_id": target_id,
                "target_external_id": external_id,
                "target_name": name,
                "account_id": account_id,
                "account_name": accounts.get(account_id) if account_id is not None else None,
                "channel": channel,
                "mode": mode,
                "status": status,
                "reason": reason,
                "due_at": iso(due_at),
                "run_at": iso(run_at),
                "sent_at": iso(sent_at),
                "finished_at": iso(finished_at),
                "lateness_seconds": seconds(sent_at, due_at),
                "attempts": attempts,
                "provider_message_id": provider_message_id,
                "rendered": _parts(rendered),
            }
            out.append(encode(entry))
        out.append(b"")
        return b"\n".join(out)

    def csv_text(self, rows: Sequence[_Row], targets: _Targets, local: _LocalTime) -> str:
        """The CSV lines of these rows, straight from database rows: the export's
        hot loop, so no LogEntry, no list per line for ``csv.writer`` to walk
        again, and, on SQLite, no datetime for a time that is only printed. The
        columns that follow from the touchpoint, the staff account or the outcome
        are written once per export and reused."""
        touchpoints, outcomes = self._csv_touchpoints, self._csv_outcomes
        accounts = self._csv_accounts
        local_text, seconds, parse = local.text, _seconds, datetime.fromisoformat
        raw = self.raw_times
        out = []
        for (  # the columns of _columns(csv=True)
            row_id,
            template_id,
            touchpoint_id,
            target_kind,
            target_id,
            channel,
            mode,
            status,
            reason,
            due_at,
            sent_at,
            finished_at,
            attempts,
            provider_message_id,
            rendered,
        ) in rows:
            key = (template_id, touchpoint_id)
            touchpoint = touchpoints.get(key)
            if touchpoint is None:
                touchpoint = touchpoints[key] = self._csv_touchpoint(template_id, touchpoint_id)
            external_id, name, account_id = targets.get((target_kind, target_id), _NO_TARGET)
            account = accounts.get(account_id)
            if account is None:
                account = accounts[account_id] = self._csv_account(account_id)
            outcome_key = (target_kind, channel, mode, status)
            outcome = outcomes.get(outcome_key)
            if outcome is None:
                outcome = outcomes[outcome_key] = self._csv_outcome(*outcome_key)
            if sent_at is None:
                sent = lateness = ""
                finished = local_text(finished_at)
            else:
                sent = local_text(sent_at)
                # a sent delivery usually finished the moment it was sent
                finished = sent if finished_at == sent_at else local_text(finished_at)
                if raw:  # _seconds, inline: this loop runs once per exported row
                    late: float | None = (parse(sent_at) - parse(due_at)).total_seconds()
                else:
                    late = seconds(sent_at, due_at)
                lateness = f"{late:.3f}"
            content = csv_field(content_text(_parts(rendered))) if rendered else ""
            out.append(
                f"{row_id},{touchpoint},{outcome[0]},{csv_field(name) if name else ''},"
                f"{target_id},{csv_field(external_id) if external_id else ''},{account},"
                f"{outcome[1]},{csv_field(reason) if reason else ''},"
                f"{local_text(due_at)},{sent},{finished},{lateness},{attempts},"
                f"{csv_field(provider_message_id) if provider_message_id else ''},{content}\r\n"
            )
        return "".join(out)

    def _csv_touchpoint(self, template_id: int, touchpoint_id: int) -> str:
        """The template and touchpoint columns of the CSV."""
        name, version = self.touchpoints.get(touchpoint_id, _NO_TOUCHPOINT)
        return csv_line(
            (
                self.templates.get(template_id) or "",
                str(template_id),
                str(version or ""),
                name or "",
                str(touchpoint_id),
            ),
            end="",
        )

    def _csv_account(self, account_id: int | None) -> str:
        """The staff account column of the CSV."""
        return csv_field(self.accounts.get(account_id, "") if account_id is not None else "")

    def _csv_outcome(self, kind: str, channel: str, mode: str, status: str) -> tuple[str, str]:
        """The target type column, and the channel, mode and status ones, of the CSV."""
        return csv_field(TARGET_ZH.get(kind, kind)), csv_line(
            (channel, MODE_ZH.get(mode, mode), STATUS_ZH.get(status, status)), end=""
        )

    def _load_templates(self, ids: set[int]) -> None:
        if ids:
            stmt = select(col(SopTemplate.id), col(SopTemplate.name)).where(
                col(SopTemplate.id).in_(ids)
            )
            self.templates.update(dict(self.conn.execute(stmt).all()))  # type: ignore[arg-type]

    def _load_touchpoints(self, ids: set[int]) -> None:
        if ids:
            stmt = (
                select(col(Touchpoint.id), col(Touchpoint.name), col(TemplateVersion.version))
                .join(TemplateVersion, col(TemplateVersion.id) == Touchpoint.version_id)
                .where(col(Touchpoint.id).in_(ids))
            )
            for tp_id, name, version in self.conn.execute(stmt).all():
                self.touchpoints[tp_id] = (name, version)  # type: ignore[index]

    def _load_accounts(self, ids: set[int]) -> None:
        if ids:
            stmt = select(col(Account.id), col(Account.name)).where(col(Account.id).in_(ids))
            self.accounts.update(dict(self.conn.execute(stmt).all()))  # type: ignore[arg-type]

    def _targets(self, rows: Sequence[_Row]) -> _Targets:
        """(external id, name, account id) by (kind, id), for (at least) these
        rows' targets, whose accounts are loaded too. A target's deliveries lie
        close together in log order (its touchpoints are hours apart), so the
        targets of recent batches are remembered rather than looked up again:
        two generations of about ``TARGET_MEMORY``, which keeps a long export's
        memory bounded."""
        if len(self._recent_targets) > TARGET_MEMORY:
            self._older_targets, self._recent_targets = self._recent_targets, {}
        recent, older = self._recent_targets, self._older_targets
        wanted: dict[str, set[int]] = {"contact": set(), "group": set()}
        kind, target = self._kind_at, self._target_at
        for r in rows:
            key = (r[kind], r[target])
            if key not in recent:
                known = older.get(key)
                if known is not None:
                    recent[key] = known
                elif key[0] in wanted:
                    wanted[key[0]].add(key[1])
        accounts: set[int] = set()
        for kind_name, table, account in (
            ("contact", CONTACTS, CONTACTS.c.account_id),
            ("group", GROUPS, GROUPS.c.owner_account_id),
        ):
            ids = wanted[kind_name]
            if not ids:
                continue
            stmt = select(table.c.id, table.c.external_id, table.c.name, account).where(
                among(table.c.id, list(ids), self.conn)
            )
            found = {row[0]: tuple(row[1:]) for row in self.conn.execute(stmt).all()}
            for target_id in ids:  # a target deleted since: no names, remembered too
                recent[(kind_name, target_id)] = found.get(target_id, _NO_TARGET)
            accounts.update(t[2] for t in found.values() if t[2] is not None)
        self._load_accounts(accounts - self.accounts.keys())
        return recent


# -- reading ------------------------------------------------------------------------


def check_sort(sort: str, order: str) -> None:
    """Raise InvalidLogQuery naming ``sort`` or ``order`` if either is unknown."""
    if sort not in SORTS:
        raise InvalidLogQuery("sort", f"sort {sort!r} is not one of: {', '.join(SORTS)}")
    if order not in ORDERS:
        raise InvalidLogQuery("order", f"order {order!r} is not one of: {', '.join(ORDERS)}")


class _Segment:
    """One ordered run of the log: a statement and the key it is ordered by."""

    def __init__(self, stmt: Select[Any], key: tuple[Any, ...], desc: bool) -> None:
        self.stmt = stmt.order_by(*(c.desc() if desc else c.asc() for c in key))

    def page(self, limit: int) -> Select[Any]:
        return self.stmt.limit(limit)

    def stream(self, conn: Connection, batch_size: int) -> Iterator[list[_Row]]:
        """The rows in batches, from a server-side cursor."""
        streaming = conn.execution_options(stream_results=True, yield_per=batch_size)
        for batch in streaming.execute(self.stmt).partitions():
            yield list(batch)


def _segments(
    flt: LogFilter,
    *,
    sqlite: bool,
    sort: str,
    order: str,
    after: Cursor | None,
    columns: tuple[Any, ...] | None = None,
) -> list[_Segment]:
    """The log from just after ``after``, as ordered segments read one after the
    other: one for the due sort; for the sent sort, the sent rows by (sent_at,
    id), then the unsent ones by id. ``columns``: those of ``_columns``."""
    desc = order == "desc"
    columns = columns or _columns(sqlite)

    def beyond(keys: tuple[Any, ...], values: tuple[Any, ...]) -> ColumnElement[bool]:
        typed = [literal(v, c.type) for c, v in zip(keys, values, strict=True)]
        return tuple_(*keys) < tuple_(*typed) if desc else tuple_(*keys) > tuple_(*typed)

    if sort == "due_at":
        key = (D.c.due_at, D.c.id)
        where = flt.conditions(sqlite=sqlite, sort=sort)
        if after is not None:
            where.append(beyond(key, (after.key, after.id)))
        return [_Segment(select(*columns).where(*where), key, desc)]
    base = flt.conditions(sqlite=sqlite, sort=sort)
    sent_key, id_key = (D.c.sent_at, D.c.id), (D.c.id,)
    sent = select(*columns).where(*base, D.c.sent_at.is_not(None))
    unsent = select(*columns).where(*base, D.c.sent_at.is_(None))
    if after is None:
        return [_Segment(sent, sent_key, desc), _Segment(unsent, id_key, desc)]
    if after.key is None:  # already among the unsent rows
        return [_Segment(unsent.where(beyond(id_key, (after.id,))), id_key, desc)]
    return [
        _Segment(sent.where(beyond(sent_key, (after.key, after.id))), sent_key, desc),
        _Segment(unsent, id_key, desc),
    ]


def _dialect_is_sqlite(conn: Connection | Session) -> bool:
    return is_sqlite(conn.get_bind() if isinstance(conn, Session) else conn)


def list_page(
    conn: Connection | Session,
    flt: LogFilter,
    *,
    sort: str = "due_at",
    order: str = "desc",
    limit: int = 50,
    cursor: str | None = None,
) -> LogPage:
    """One page of the log and the cursor of the next (``None`` on the last)."""
    check_sort(sort, order)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidLogQuery("limit", f"limit must be between 1 and {MAX_PAGE}")
    after = Cursor.decode(cursor, sort=sort, order=order) if cursor else None
    sqlite = _dialect_is_sqlite(conn)
    rows: list[_Row] = []
    for segment in _segments(flt, sqlite=sqlite, sort=sort, order=order, after=after):
        rows += conn.execute(segment.page(limit + 1 - len(rows))).all()
        if len(rows) > limit:
            break
    more = len(rows) > limit
    entries = _Labels(conn, sqlite=sqlite).entries(rows[:limit])
    next_cursor = None
    if more:
        last = entries[-1]
        next_cursor = Cursor(sort, order, getattr(last, sort), last.id).encode()
    return LogPage(entries, next_cursor)


def read_snapshot(engine: Engine) -> Engine:
    """The engine for reads that must see one consistent snapshot across
    several statements (SQLite: a deferred read transaction in WAL mode, which
    also never takes the write lock; PostgreSQL: REPEATABLE READ)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return reader(engine)


_T = TypeVar("_T")
_DONE = object()


class _Stopped(Exception):
    """The reader of a read-ahead stream went away."""


def _read_ahead(read: Callable[[], Generator[_T, None, None]], depth: int) -> Iterator[_T]:
    """The items of ``read()``, read in a thread of their own up to ``depth``
    items ahead of the reader. The database round trips of the next batch then
    overlap the formatting of this one (the driver lets go of the GIL while it
    waits on the server). The thread owns everything ``read`` opens: a reader
    that stops early (a client that hangs up) stops it at its next item, and
    ``read`` closes what it opened as it unwinds."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def run() -> None:
        source = read()
        try:
            for item in source:
                put(item)
            put(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the reader, raised there
            with contextlib.suppress(_Stopped):
                put(exc)
        finally:
            source.close()

    thread = threading.Thread(target=run, name="sopbot-log-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # a thread waiting to put sees it within its timeout
        thread.join()


def _batches(
    engine: Engine,
    flt: LogFilter,
    *,
    sort: str,
    order: str,
    csv: bool = False,
    batch_size: int | None = None,
) -> Iterator[tuple[_Labels, list[_Row], _Targets]]:
    """Every matching row in log order (the columns of ``_columns``), in batches
    of ``batch_size`` (default ``EXPORT_BATCH``), each with its labels prepared.
    The rows come from server-side cursors in one snapshot (from a database
    server, read ahead in a thread: see ``_read_ahead``); memory stays at a few
    batches however many rows match."""
    check_sort(sort, order)
    batch_size = batch_size or EXPORT_BATCH
    sqlite = is_sqlite(engine)
    columns = _columns(sqlite, csv=csv, raw=True)
    segments = _segments(flt, sqlite=sqlite, sort=sort, order=order, after=None, columns=columns)

    def read() -> Generator[tuple[_Labels, list[_Row], _Targets], None, None]:
        with read_snapshot(engine).connect() as conn:
            labels = _Labels(conn, sqlite=sqlite, csv=csv, raw=True)
            for segment in segments:
                for batch in segment.stream(conn, batch_size):
                    yield labels, batch, labels.prepare(batch)

    if sqlite:  # in this process: no server to wait on, and a thread would contend for the GIL
        return read()
    return _read_ahead(read, EXPORT_PREFETCH)


def iter_entries(
    engine: Engine, flt: LogFilter, *, sort: str = "due_at", order: str = "desc"
) -> Iterator[list[LogEntry]]:
    """Every matching entry in log order, in batches (see ``_batches``)."""
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order):
        yield labels.entries(rows, targets)


def read_entries(
    conn: Connection | Session, where: Sequence[Any], order_by: Sequence[Any], limit: int
) -> list[LogEntry]:
    """Log entries of the deliveries matching ``where`` (for other readers of the
    log, such as retention's archive)."""
    sqlite = is_sqlite(conn.get_bind() if isinstance(conn, Session) else conn)
    rows = conn.execute(
        select(*_columns(sqlite)).where(*where).order_by(*order_by).limit(limit)
    ).all()
    return _Labels(conn, sqlite=sqlite).entries(rows)


# -- exports ------------------------------------------------------------------------


class _LocalTime:
    """UTC → "YYYY-MM-DD HH:MM:SS" in the workspace zone (Excel reads it as a
    date-time), from a datetime or SQLite's stored "YYYY-MM-DD HH:MM:SS.ffffff"
    UTC text. The local "YYYY-MM-DD HH" of each UTC hour is worked out once, and
    the last hour's text is kept at hand (a log is read in time order, so most
    values fall in the hour before them); a zone whose offset is not whole hours
    takes the general path."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._hours: dict[Any, str | None] = {}
        self._last_hour = "-"  # stored text of the last hour seen, and its local prefix
        self._last_prefix = ""

    def _prefix(self, key: Any, instant: datetime) -> str | None:
        local = instant.astimezone(self.zone)
        whole = (local.utcoffset() or timedelta()) % timedelta(hours=1) == timedelta()
        prefix = self._hours[key] = local.strftime("%Y-%m-%d %H") if whole else None
        return prefix

    def text(self, value: datetime | str | None) -> str:
        """``value`` in local time, as written in the CSV ("" for none)."""
        if value.__class__ is str and value.startswith(self._last_hour):  # type: ignore[union-attr]
            return self._last_prefix + value[13:19]  # type: ignore[index]
        return self._general(value)

    def _general(self, value: datetime | str | None) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            key = value[:13]
            prefix = self._hours.get(key, "")
            if prefix == "":
                prefix = self._prefix(key, datetime.fromisoformat(value[:19] + "+00:00"))
            if prefix is not None:
                self._last_hour, self._last_prefix = key, prefix
                return prefix + value[13:19]
            value = datetime.fromisoformat(value[:19] + "+00:00")
        hour = value.toordinal() * 24 + value.hour
        prefix = self._hours.get(hour, "")
        if prefix == "":
            prefix = self._prefix(hour, value)
        if prefix is None:
            return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S")
        return f"{prefix}:{value.minute:02d}:{value.second:02d}"


def csv_header(zone_name: str) -> list[str]:
    return [
        "发送任务ID",
        "SOP 模板",
        "模板ID",
        "版本",
        "触达节点",
        "触达节点ID",
        "对象类型",
        "对象",
        "对象ID",
        "对象外部ID",
        "员工账号",
        "渠道",
        "执行方式",
        "状态",
        "原因",
        f"计划时间 ({zone_name})",
        f"发送时间 ({zone_name})",
        f"完成时间 ({zone_name})",
        "延迟(秒)",
        "尝试次数",
        "渠道消息ID",
        "内容",
    ]


def csv_field(text: str) -> str:
    """``text`` as one CSV field, as ``csv.writer`` writes it by default (the
    excel dialect, minimal quoting): quoted when it holds a comma, a quote or a
    line break, its quotes doubled."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    if "," in text or "\n" in text or "\r" in text:
        return '"' + text + '"'
    return text


def csv_line(fields: Iterable[str], *, end: str = "\r\n") -> str:
    """CSV fields joined into a line, ending in CRLF as ``csv.writer``'s lines do
    (``end=""``: part of a line)."""
    return ",".join(map(csv_field, fields)) + end


def export_csv(
    engine: Engine, flt: LogFilter, zone: tzinfo, *, sort: str = "due_at", order: str = "desc"
) -> Iterator[bytes]:
    """The log as CSV, UTF-8 with a BOM (so Excel reads Chinese text), times in
    ``zone``; one chunk of bytes per batch of rows."""
    local = _LocalTime(zone)
    yield ("\ufeff" + csv_line(csv_header(str(zone)))).encode()
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order, csv=True):
        yield labels.csv_text(rows, targets, local).encode()


def export_ndjson(
    engine: Engine, flt: LogFilter, *, sort: str = "due_at", order: str = "desc"
) -> Iterator[bytes]:
    """The log as newline-delimited JSON: one object per delivery (the API's row
    shape, ``LogEntry.as_json``: times in UTC), one chunk of bytes per batch of rows."""
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order):
        yield labels.json_lines(rows, targets)
