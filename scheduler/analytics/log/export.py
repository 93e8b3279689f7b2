"""The delivery log streamed out whole, as CSV or NDJSON: every matching row in
log order, read in one snapshot from server-side cursors, in batches, with memory
bounded by a few batches however many rows match."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Any, TypeVar

from pydantic_core import to_json
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from scheduler.analytics.log.entries import (
    MODE_EN,
    MODE_ZH,
    NO_TARGET,
    NO_TOUCHPOINT,
    PART_EN,
    PART_ZH,
    STATUS_EN,
    STATUS_ZH,
    TARGET_EN,
    TARGET_ZH,
    Labels,
    LogEntry,
    LogRow,
    Targets,
    content_parts,
    content_text,
    log_columns,
    seconds_between,
    utc_from_text,
)
from scheduler.analytics.log.filters import LogFilter, check_sort
from scheduler.analytics.log.paging import segments
from sop_templates.wording import EN, ZH, reason_text
from sopbot.db import is_sqlite
from sopbot.sql import read_snapshot

EXPORT_BATCH = 2000
EXPORT_PREFETCH = 2  # batches an export reads ahead of the one being written out


_T = TypeVar("_T")
_DONE = object()


class _Stopped(Exception):
    """The reader of a read-ahead stream went away."""


def read_ahead(read: Callable[[], Generator[_T, None, None]], depth: int) -> Iterator[_T]:
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
) -> Iterator[tuple[ExportLabels, list[LogRow], Targets]]:
    """Every matching row in log order (the columns of ``log_columns``), in batches
    of ``batch_size`` (default ``EXPORT_BATCH``), each with its labels prepared.
    The rows come from server-side cursors in one snapshot (from a database
    server, read ahead in a thread: see ``read_ahead``); memory stays at a few
    batches however many rows match."""
    check_sort(sort, order)
    batch_size = batch_size or EXPORT_BATCH
    sqlite = is_sqlite(engine)
    columns = log_columns(sqlite, csv=csv, raw=True)
    runs = segments(flt, sqlite=sqlite, sort=sort, order=order, after=None, columns=columns)

    def read() -> Generator[tuple[ExportLabels, list[LogRow], Targets], None, None]:
        with read_snapshot(engine).connect() as conn:
            labels = ExportLabels(conn, sqlite=sqlite, csv=csv, raw=True)
            for segment in runs:
                for batch in segment.stream(conn, batch_size):
                    yield labels, batch, labels.prepare(batch)

    if sqlite:  # in this process: no server to wait on, and a thread would contend for the GIL
        return read()
    return read_ahead(read, EXPORT_PREFETCH)


def iter_entries(
    engine: Engine, flt: LogFilter, *, sort: str = "due_at", order: str = "desc"
) -> Iterator[list[LogEntry]]:
    """Every matching entry in log order, in batches (see ``_batches``)."""
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order):
        yield labels.entries(rows, targets)


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
        value = utc_from_text(text)
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


class ExportLabels(Labels):
    """``Labels`` that also write rows out as NDJSON or CSV lines."""

    def __init__(
        self,
        conn: Connection | Session,
        *,
        sqlite: bool,
        csv: bool = False,
        raw: bool | None = None,
    ) -> None:
        super().__init__(conn, sqlite=sqlite, csv=csv, raw=raw)
        # CSV columns already written, by (template, touchpoint), by account and
        # by (target kind, channel, mode, status): few of each, kept for the read.
        self._csv_touchpoints: dict[tuple[int, int], str] = {}
        self._csv_accounts: dict[int | None, str] = {}
        self._csv_outcomes: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        self._csv_reasons: dict[str, str] = {}  # stored reason → its CSV cell, in words
        self.lang = ZH

    def json_lines(self, rows: Sequence[LogRow], targets: Targets) -> bytes:
        """NDJSON lines of these rows, each ``LogEntry.as_json()`` of the row but
        built straight from it: the NDJSON export's hot loop, so no LogEntry, and
        on SQLite no datetime for a time that is only printed."""
        accounts, templates, touchpoints = self.accounts, self.templates, self.touchpoints
        encode, iso, seconds = _json_line, _iso_utc, seconds_between
        outcome_of = self.outcome
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
            external_id, name, account_id = targets.get((target_kind, target_id), NO_TARGET)
            tp_name, version = touchpoints.get(touchpoint_id, NO_TOUCHPOINT)
            clicks, first_click, converted_at = outcome_of(row_id)
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
                "rendered": content_parts(rendered),
                "clicks": clicks,
                "first_clicked_at": iso(first_click),
                "converted_at": iso(converted_at),
            }
            out.append(encode(entry))
        out.append(b"")
        return b"\n".join(out)

    def csv_text(self, rows: Sequence[LogRow], targets: Targets, local: LocalTime) -> str:
        """The CSV lines of these rows, straight from database rows: the export's
        hot loop, so no LogEntry, no list per line for ``csv.writer`` to walk
        again, and, on SQLite, no datetime for a time that is only printed. The
        columns that follow from the touchpoint, the staff account or the outcome
        are written once per export and reused."""
        touchpoints, outcomes = self._csv_touchpoints, self._csv_outcomes
        accounts, reasons = self._csv_accounts, self._csv_reasons
        parts = PART_EN if self.lang == EN else PART_ZH
        outcome_of = self.outcome
        local_text, seconds, parse = local.text, seconds_between, datetime.fromisoformat
        raw = self.raw_times
        out = []
        for (  # the columns of log_columns(csv=True)
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
            external_id, name, account_id = targets.get((target_kind, target_id), NO_TARGET)
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
                if raw:  # seconds_between, inline: this loop runs once per exported row
                    late: float | None = (parse(sent_at) - parse(due_at)).total_seconds()
                else:
                    late = seconds(sent_at, due_at)
                lateness = f"{late:.3f}"
            content = csv_field(content_text(content_parts(rendered), parts)) if rendered else ""
            clicks, first_click, converted_at = outcome_of(row_id)
            achieved = (
                f",{clicks},{local_text(first_click)},{local_text(converted_at)}"
                if clicks or converted_at is not None
                else ",0,,"
            )
            worded = ""
            if reason:
                known = reasons.get(reason)
                if known is None:
                    known = csv_field(reason_text(reason, self.lang))
                    if len(reasons) < 10_000:
                        reasons[reason] = known
                worded = known
            out.append(
                f"{row_id},{touchpoint},{outcome[0]},{csv_field(name) if name else ''},"
                f"{target_id},{csv_field(external_id) if external_id else ''},{account},"
                f"{outcome[1]},{worded},"
                f"{local_text(due_at)},{sent},{finished},{lateness},{attempts},"
                f"{csv_field(provider_message_id) if provider_message_id else ''},{content}"
                f"{achieved}\r\n"
            )
        return "".join(out)

    def _csv_touchpoint(self, template_id: int, touchpoint_id: int) -> str:
        """The template and touchpoint columns of the CSV."""
        name, version = self.touchpoints.get(touchpoint_id, NO_TOUCHPOINT)
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
        targets, modes, statuses = (
            (TARGET_EN, MODE_EN, STATUS_EN) if self.lang == EN else (TARGET_ZH, MODE_ZH, STATUS_ZH)
        )
        return csv_field(targets.get(kind, kind)), csv_line(
            (channel, modes.get(mode, mode), statuses.get(status, status)), end=""
        )


class LocalTime:
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


CSV_HEADER_EN = [
    "delivery id",
    "SOP template",
    "template id",
    "version",
    "touchpoint",
    "touchpoint id",
    "target type",
    "target",
    "target id",
    "target external id",
    "staff account",
    "channel",
    "execution mode",
    "status",
    "reason",
    "due ({zone})",
    "sent ({zone})",
    "finished ({zone})",
    "lateness (s)",
    "attempts",
    "channel message id",
    "content",
    "clicks",
    "first click ({zone})",
    "converted ({zone})",
]


def csv_header(zone_name: str, lang: str = ZH) -> list[str]:
    """The CSV's column names in ``lang`` (``zh_CN`` or ``en``)."""
    if lang == EN:
        return [name.format(zone=zone_name) for name in CSV_HEADER_EN]
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
        "点击次数",
        f"首次点击时间 ({zone_name})",
        f"转化时间 ({zone_name})",
    ]


# A cell starting with one of these is read as a formula by Excel, LibreOffice
# and Google Sheets ("=cmd|' /C calc'!A0" in a contact's name): such a cell is
# written with a leading apostrophe, which shows it as text (OWASP's advice).
FORMULA_START = frozenset("=+-@\t\r")


def csv_field(text: str) -> str:
    """``text`` as one CSV field, as ``csv.writer`` writes it by default (the
    excel dialect, minimal quoting): quoted when it holds a comma, a quote or a
    line break, its quotes doubled; a text a spreadsheet would run as a formula
    (see ``FORMULA_START``) gets a leading ``'``. Every text cell of an export
    goes through here; the numbers sopbot formats itself (ids, times, lateness,
    attempts) do not."""
    if text[:1] in FORMULA_START:
        text = "'" + text
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
    engine: Engine,
    flt: LogFilter,
    zone: tzinfo,
    *,
    sort: str = "due_at",
    order: str = "desc",
    lang: str = ZH,
) -> Iterator[bytes]:
    """The log as CSV, UTF-8 with a BOM (so Excel reads Chinese text), times in
    ``zone``, column names, statuses and reasons in ``lang`` (the reasons through
    ``sop_templates.wording``, as on every page); one chunk of bytes per batch."""
    local = LocalTime(zone)
    lang = EN if lang == EN else ZH
    yield ("\ufeff" + csv_line(csv_header(str(zone), lang))).encode()
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order, csv=True):
        labels.lang = lang
        yield labels.csv_text(rows, targets, local).encode()


def export_ndjson(
    engine: Engine, flt: LogFilter, *, sort: str = "due_at", order: str = "desc"
) -> Iterator[bytes]:
    """The log as newline-delimited JSON: one object per delivery (the API's row
    shape, ``LogEntry.as_json``: times in UTC), one chunk of bytes per batch of rows."""
    for labels, rows, targets in _batches(engine, flt, sort=sort, order=order):
        yield labels.json_lines(rows, targets)
