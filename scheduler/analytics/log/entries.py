"""Log entries: the columns read for a delivery and the names an operator reads
for its ids (template, touchpoint, target, staff account), looked up once per
batch of rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

from sqlalchemy import String, Text, cast, func, select, type_coerce
from sqlalchemy.engine import Connection, Row
from sqlmodel import Session, col

from audiences.tables import ACCOUNTS, LINK_CLICKS, owner_account, target_table
from scheduler.outbox.repository import DELIVERIES
from scheduler.outcomes.models import Conversion
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint
from sopbot.clock import ensure_utc
from sopbot.db import is_sqlite
from sopbot.sql import among

CONVERSIONS = Conversion.__table__  # type: ignore[attr-defined]
TARGET_MEMORY = 10_000  # targets an export remembers across batches (see Labels._targets)


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
    "awaiting_staff": "待执行",
    "done": "已执行",
    "skipped_by_staff": "员工已跳过",
}
TARGET_ZH = {"contact": "客户", "group": "客户群"}
MODE_ZH = {
    "send": "自动发送",
    "task": "群发任务（员工确认）",
    "remind": "提醒员工发送",
    "welcome": "欢迎语",
    "moment": "朋友圈",
}
# the same in English (the CSV export asked for in English)
STATUS_EN = {
    "scheduled": "scheduled",
    "claimed": "claimed",
    "sending": "sending",
    "sent": "sent",
    "failed": "failed",
    "skipped": "skipped",
    "cancelled": "cancelled",
    "missed": "missed",
    "unknown": "result unknown",
    "awaiting_staff": "awaiting staff",
    "done": "done by staff",
    "skipped_by_staff": "skipped by staff",
}
TARGET_EN = {"contact": "contact", "group": "group chat"}
MODE_EN = {
    "send": "send",
    "task": "mass-send task (staff confirm)",
    "remind": "remind staff",
    "welcome": "welcome message",
    "moment": "moments post",
}
PART_ZH = {
    "image": "图片",
    "link": "链接",
    "miniprogram": "小程序",
    "file": "文件",
    "video": "视频",
}
PART_EN = {
    "image": "image",
    "link": "link",
    "miniprogram": "mini-program",
    "file": "file",
    "video": "video",
}


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
    # what the delivery achieved: a person's clicks on its tracked links (previews
    # apart), the first one, and its enrollment's conversion attributed to it
    clicks: int = 0
    first_clicked_at: datetime | None = None
    converted_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 in UTC (``Z``)."""
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        for key in (
            "due_at",
            "run_at",
            "sent_at",
            "finished_at",
            "first_clicked_at",
            "converted_at",
        ):
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
    DELIVERIES.c.id,
    DELIVERIES.c.template_id,
    DELIVERIES.c.version_id,
    DELIVERIES.c.touchpoint_id,
    DELIVERIES.c.occurrence,
    DELIVERIES.c.target_kind,
    DELIVERIES.c.target_id,
    DELIVERIES.c.channel,
    DELIVERIES.c.mode,
    DELIVERIES.c.status,
    DELIVERIES.c.reason,
    DELIVERIES.c.due_at,
    DELIVERIES.c.run_at,
    DELIVERIES.c.sent_at,
    DELIVERIES.c.finished_at,
    DELIVERIES.c.attempts,
    DELIVERIES.c.provider_message_id,
    DELIVERIES.c.rendered,
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


def log_columns(sqlite: bool, *, csv: bool = False, raw: bool | None = None) -> tuple[Any, ...]:
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
def utc_from_text(text: str) -> datetime: ...
@overload
def utc_from_text(text: None) -> None: ...
def utc_from_text(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text + "+00:00")


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads minus two Python frames per value


def content_parts(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        try:
            return _scan_json(value, 0)[0]  # type: ignore[no-any-return]
        except StopIteration:  # not at a value: leading whitespace, say
            return json.loads(value)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]


def seconds_between(later: Any, earlier: Any) -> float | None:
    """``later - earlier`` in seconds, from datetimes or SQLite's stored text."""
    if later is None:
        return None
    if isinstance(later, str):
        return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
    return float((later - earlier).total_seconds())


NO_TARGET: tuple[Any, Any, Any] = (None, None, None)
NO_TOUCHPOINT: tuple[Any, Any] = (None, None)
NO_OUTCOME: tuple[int, Any, Any] = (0, None, None)  # clicks, first click, converted at
OUTCOME_MEMORY = 20_000  # deliveries with clicks or a conversion remembered (see Labels)


Targets = dict[tuple[str, int], tuple[Any, Any, Any]]  # (kind, id) -> (external id, name, account)
LogRow = Row[*tuple[Any, ...]]  # a row of any number of columns (Row[Any] is one column)


class Labels:
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
        # where the ids to look up are in the rows (see log_columns)
        names = [c.name for c in log_columns(sqlite, csv=csv, raw=raw)]
        self._template_at, self._touchpoint_at, self._kind_at, self._target_at = (
            names.index(name)
            for name in ("template_id", "touchpoint_id", "target_kind", "target_id")
        )
        self.templates: dict[int, str] = {}
        self.touchpoints: dict[int, tuple[str, int]] = {}
        self.accounts: dict[int, str] = {}
        self._recent_targets: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._older_targets: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        # (clicks, first click, converted at) by delivery id, for prepared batches
        # (two generations, like targets: an export prepares ahead of writing)
        self._recent_outcomes: dict[int, tuple[int, Any, Any]] = {}
        self._older_outcomes: dict[int, tuple[int, Any, Any]] = {}

    def prepare(self, rows: Sequence[LogRow]) -> Targets:
        """Load the names this batch needs; return its targets by (kind, id).
        This reads the database, and only it: the ``entries``, ``json_lines`` and
        ``csv_text`` of a prepared batch only read what it loaded (which is how
        an export reads the next batch while it writes this one out)."""
        template, touchpoint = self._template_at, self._touchpoint_at
        self._load_templates({r[template] for r in rows} - self.templates.keys())
        self._load_touchpoints({r[touchpoint] for r in rows} - self.touchpoints.keys())
        self._load_outcomes([r[0] for r in rows])
        return self._targets(rows)

    def outcome(self, delivery_id: int) -> tuple[int, Any, Any]:
        """(clicks, first click, converted at) of a delivery of a prepared batch."""
        found = self._recent_outcomes.get(delivery_id)
        if found is None:
            found = self._older_outcomes.get(delivery_id, NO_OUTCOME)
        return found

    def _load_outcomes(self, ids: list[int]) -> None:
        """Clicks and attributed conversions of a batch: two grouped queries on
        indexes by delivery, however many rows (only deliveries that have any
        are kept)."""
        if len(self._recent_outcomes) > OUTCOME_MEMORY:
            self._older_outcomes, self._recent_outcomes = self._recent_outcomes, {}
        if not ids:
            return
        c, v = LINK_CLICKS.c, CONVERSIONS.c
        found: dict[int, tuple[int, Any, Any]] = {}
        for delivery_id, count, first in self.conn.execute(
            select(c.delivery_id, func.count(), func.min(c.clicked_at))
            .where(among(c.delivery_id, ids, self.conn), c.bot.is_(False))
            .group_by(c.delivery_id)
        ).all():
            found[delivery_id] = (count, first, None)
        for delivery_id, converted_at in self.conn.execute(
            select(v.delivery_id, v.converted_at).where(among(v.delivery_id, ids, self.conn))
        ).all():
            count, first, _ = found.get(delivery_id, NO_OUTCOME)
            found[delivery_id] = (count, first, converted_at)
        self._recent_outcomes.update(found)

    def entries(self, rows: Sequence[LogRow], targets: Targets | None = None) -> list[LogEntry]:
        targets = self.prepare(rows) if targets is None else targets
        raw = self.raw_times
        accounts, templates, touchpoints = self.accounts, self.templates, self.touchpoints
        outcome = self.outcome
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
            external_id, name, account_id = targets.get((target_kind, target_id), NO_TARGET)
            tp_name, version = touchpoints.get(touchpoint_id, NO_TOUCHPOINT)
            clicks, first_click, converted_at = outcome(row_id)
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
                    utc_from_text(due_at) if raw else due_at,
                    utc_from_text(run_at) if raw else run_at,
                    utc_from_text(sent_at) if raw else sent_at,
                    utc_from_text(finished_at) if raw else finished_at,
                    seconds_between(sent_at, due_at),
                    attempts,
                    provider_message_id,
                    content_parts(rendered),
                    clicks,
                    ensure_utc(first_click) if first_click is not None else None,
                    ensure_utc(converted_at) if converted_at is not None else None,
                )
            )
        return out

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
            stmt = select(ACCOUNTS.c.id, ACCOUNTS.c.name).where(ACCOUNTS.c.id.in_(ids))
            self.accounts.update(dict(self.conn.execute(stmt).all()))  # type: ignore[arg-type]

    def _targets(self, rows: Sequence[LogRow]) -> Targets:
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
        for kind_name, ids in wanted.items():
            if not ids:
                continue
            table, account = target_table(kind_name), owner_account(kind_name)
            stmt = select(table.c.id, table.c.external_id, table.c.name, account).where(
                among(table.c.id, list(ids), self.conn)
            )
            found = {row[0]: tuple(row[1:]) for row in self.conn.execute(stmt).all()}
            for target_id in ids:  # a target deleted since: no names, remembered too
                recent[(kind_name, target_id)] = found.get(target_id, NO_TARGET)
            accounts.update(t[2] for t in found.values() if t[2] is not None)
        self._load_accounts(accounts - self.accounts.keys())
        return recent


def read_entries(
    conn: Connection | Session, where: Sequence[Any], order_by: Sequence[Any], limit: int
) -> list[LogEntry]:
    """Log entries of the deliveries matching ``where`` (for other readers of the
    log, such as retention's archive)."""
    sqlite = is_sqlite(conn.get_bind() if isinstance(conn, Session) else conn)
    rows = conn.execute(
        select(*log_columns(sqlite)).where(*where).order_by(*order_by).limit(limit)
    ).all()
    return Labels(conn, sqlite=sqlite).entries(rows)
