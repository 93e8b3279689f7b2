"""Reading contacts from a CSV file (as Excel or a WeCom export writes it).

UTF-8 with or without a BOM. One header row; recognised columns (English or the
Chinese an export uses):

============  ==========================================
external_id   外部联系人ID, 客户ID — required
name          姓名, 客户名称, 昵称
account       员工账号, 添加人, 所属员工 — the owning staff account
joined_at     添加时间 — ISO 8601, or ``2027-03-01 21:30`` / ``2027/3/1`` in
              the import's time zone
tags          标签 — separated by ``|``, ``,``, ``;``, ``、``
timezone      时区 — IANA name
status        状态 — active / deleted / blocked / unsubscribed
============  ==========================================

Every other column is an attribute, text by default; ``child_age:number`` or
``vip:bool`` in the header types it (segments compare by type).

Parsing is pure: it returns the rows and the per-row problems (line number,
column, reason). :func:`apply_import` writes them through the audience unit of
work (``audiences.changes``), so imported tags trigger SOPs like any other tag.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session, col

from audiences import changes
from audiences import service as audiences_service
from audiences.events import ContactUpdated, TagAdded
from audiences.models import Account, ContactStatus
from sopbot.clock import ensure_utc, get_zone
from sopbot.sql import chunked

COLUMNS: dict[str, tuple[str, ...]] = {
    "external_id": ("external_id", "externaluserid", "external_user_id", "外部联系人id", "客户id"),
    "name": ("name", "姓名", "客户名称", "客户昵称", "昵称", "名称"),
    "account": ("account", "员工账号", "添加人", "所属员工", "员工"),
    "joined_at": ("joined_at", "添加时间", "加好友时间"),
    "tags": ("tags", "标签", "客户标签"),
    "timezone": ("timezone", "时区"),
    "status": ("status", "状态"),
}
_ALIASES = {alias: column for column, names in COLUMNS.items() for alias in names}
STATUS_WORDS = {
    "正常": ContactStatus.ACTIVE,
    "已删除": ContactStatus.DELETED,
    "删除": ContactStatus.DELETED,
    "已拉黑": ContactStatus.BLOCKED,
    "拉黑": ContactStatus.BLOCKED,
    "退订": ContactStatus.UNSUBSCRIBED,
    "已退订": ContactStatus.UNSUBSCRIBED,
    **{s: s for s in ContactStatus.ALL},
}
_TAG_SPLIT = re.compile(r"[|,;，；、]")
_DATE = re.compile(
    r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$"
)
_TRUE = {"true", "yes", "y", "1", "是", "对"}
_FALSE = {"false", "no", "n", "0", "否", "不是"}
MAX_BYTES = 200 * 1024 * 1024


@dataclass
class RowError:
    line: int  # 1-based line in the file where the record starts
    field: str  # the column as written in the header ("file" for the whole file)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ImportRow:
    line: int
    external_id: str
    name: str | None = None
    account: str | None = None
    account_column: str = "account"
    joined_at: datetime | None = None
    timezone: str | None = None
    status: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


@dataclass
class ParsedCsv:
    rows: list[ImportRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    total: int = 0  # data records read

    @property
    def lines_with_errors(self) -> set[int]:
        return {e.line for e in self.errors}


def detect_encoding(data: bytes) -> str:
    """``auto``: UTF-8 (with or without BOM) when the bytes are valid UTF-8,
    otherwise GB18030 — what Excel on Chinese Windows writes as "CSV" (GB18030
    is a superset of GBK and GB2312)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def decode(data: bytes, encoding: str = "utf-8") -> tuple[str | None, RowError | None]:
    """Bytes → text; a BOM is dropped. A file in another encoding is refused
    with the line where it first fails (Excel: save as "CSV UTF-8").
    ``encoding="auto"`` tells UTF-8 from GBK/GB18030 (``detect_encoding``)."""
    if len(data) > MAX_BYTES:
        return None, RowError(0, "file", f"the file is over {MAX_BYTES // 1024 // 1024} MB")
    if encoding.lower() == "auto":
        encoding = detect_encoding(data)
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, RowError(
            line,
            "file",
            f"not valid {encoding} at byte {exc.start}; save the file as 'CSV UTF-8' "
            "(Excel: Save As → CSV UTF-8) or pass the encoding it was written in",
        )
    except LookupError:
        return None, RowError(0, "file", f"unknown encoding {encoding!r}")


def parse_csv(
    data: bytes | str, *, timezone: str = "Asia/Shanghai", encoding: str = "utf-8"
) -> ParsedCsv:
    """Read and validate every row; never raises for bad content."""
    out = ParsedCsv()
    if isinstance(data, bytes):
        text, problem = decode(data, encoding)
        if problem:
            out.errors.append(problem)
            return out
        assert text is not None
    else:
        text = data.removeprefix("\ufeff")
    try:
        zone = get_zone(timezone)
    except ValueError as exc:
        out.errors.append(RowError(0, "file", str(exc)))
        return out
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count) if first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        out.errors.append(RowError(1, "file", "the file is empty; the first row must be a header"))
        return out
    except csv.Error as exc:
        out.errors.append(RowError(1, "file", f"cannot read the header: {exc}"))
        return out
    columns, problems = _read_header(header)
    if problems:
        out.errors += problems
        return out
    seen: dict[tuple[str | None, str], int] = {}
    line = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.errors.append(RowError(line, "file", f"unreadable CSV: {exc}"))
            break
        start, line = line, reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        out.total += 1
        row, row_errors = _read_row(start, header, columns, values, zone)
        if row is not None and not row_errors:
            key = (row.account, row.external_id)
            if key in seen:
                row_errors.append(
                    RowError(
                        start,
                        _header_of(header, columns, "external_id"),
                        f"{row.external_id!r} appears again (first on line {seen[key]})",
                    )
                )
            else:
                seen[key] = start
        if row_errors:
            out.errors += row_errors
        elif row is not None:
            out.rows.append(row)
    return out


def _read_header(header: list[str]) -> tuple[list[tuple[str, str | None]], list[RowError]]:
    """Per column: (known column name or attribute name, attribute type or None)."""
    columns: list[tuple[str, str | None]] = []
    errors: list[RowError] = []
    used: dict[str, str] = {}
    for raw in header:
        name = raw.strip()
        known = _ALIASES.get(name.lower())
        if known:
            if known in used:
                errors.append(
                    RowError(1, name, f"a second {known} column (first: {used[known]!r})")
                )
            used[known] = name
            columns.append((known, None))
            continue
        if not name:
            columns.append(("", "skip"))
            continue
        attr, _, kind = name.partition(":")
        kind = kind.strip().lower() or "text"
        if kind not in ("text", "number", "bool"):
            errors.append(
                RowError(1, name, f"unknown attribute type {kind!r}; use text, number or bool")
            )
        if not attr.strip() or '"' in attr or "\\" in attr:
            errors.append(RowError(1, name, "an attribute column needs a name without quotes"))
        columns.append(("attr:" + attr.strip(), kind))
    if "external_id" not in used:
        errors.append(
            RowError(
                1, "external_id", "missing column; the header needs external_id (外部联系人ID)"
            )
        )
    return columns, errors


def _header_of(header: list[str], columns: list[tuple[str, str | None]], name: str) -> str:
    for raw, (column, _) in zip(header, columns, strict=False):
        if column == name:
            return raw.strip()
    return name


def _read_row(
    line: int,
    header: list[str],
    columns: list[tuple[str, str | None]],
    values: list[str],
    zone: ZoneInfo,
) -> tuple[ImportRow | None, list[RowError]]:
    errors: list[RowError] = []
    if len(values) > len(header):
        return None, [
            RowError(line, "file", f"{len(values)} values but the header has {len(header)} columns")
        ]
    fields: dict[str, str] = {}
    row = ImportRow(line=line, external_id="")
    for raw, (column, kind), value in zip(header, columns, values, strict=False):
        value = value.strip()
        label = raw.strip()
        if kind == "skip" or not value:
            continue
        if column.startswith("attr:"):
            try:
                row.attributes[column[5:]] = _typed(value, kind or "text")
            except ValueError as exc:
                errors.append(RowError(line, label, str(exc)))
            continue
        fields[column] = value
        if column == "account":
            row.account_column = label
        try:
            _set(row, column, value, zone)
        except ValueError as exc:
            errors.append(RowError(line, label, str(exc)))
    if not fields.get("external_id"):
        errors.append(RowError(line, _header_of(header, columns, "external_id"), "empty; required"))
    return row, errors


def _set(row: ImportRow, column: str, value: str, zone: ZoneInfo) -> None:
    if column == "external_id":
        if len(value) > 128:
            raise ValueError("longer than 128 characters")
        row.external_id = value
    elif column == "name":
        if len(value) > 200:
            raise ValueError("longer than 200 characters")
        row.name = value
    elif column == "account":
        if len(value) > 128:
            raise ValueError("longer than 128 characters")
        row.account = value
    elif column == "joined_at":
        row.joined_at = parse_time(value, zone)
    elif column == "tags":
        tags = [t.strip() for t in _TAG_SPLIT.split(value) if t.strip()]
        for tag in tags:
            if len(tag) > 100:
                raise ValueError(f"tag {tag[:20]!r}… is longer than 100 characters")
        row.tags = list(dict.fromkeys(tags))
    elif column == "timezone":
        get_zone(value)
        row.timezone = value
    elif column == "status":
        status = STATUS_WORDS.get(value.lower()) or STATUS_WORDS.get(value)
        if status is None:
            raise ValueError(f"unknown status {value!r}; use {', '.join(ContactStatus.ALL)}")
        row.status = status


def parse_time(value: str, zone: ZoneInfo) -> datetime:
    """ISO 8601 or the forms Excel writes; without an offset, local time in ``zone``."""
    match = _DATE.match(value.strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a date-time like 2027-03-01 21:30 or 2027-03-01T21:30:00+08:00"
        )
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        local = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date: {exc}") from None
    if offset:
        text = local.isoformat() + ("+00:00" if offset == "Z" else offset)
        return ensure_utc(datetime.fromisoformat(text))
    return ensure_utc(local.replace(tzinfo=zone))


def _typed(value: str, kind: str) -> Any:
    if kind == "number":
        try:
            number = int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if kind == "bool":
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true/false")
    return value


# ------------------------------------------------------------------------ applying


@dataclass
class ImportReport:
    rows: int = 0  # data rows in the file
    valid: int = 0
    imported: int = 0  # rows written (0 unless applied)
    created: int = 0
    updated: int = 0
    accounts_created: list[str] = field(default_factory=list)
    reaction: changes.Reaction = field(default_factory=changes.Reaction)
    errors: list[RowError] = field(default_factory=list)
    applied: bool = False
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "imported": self.imported,
            "created": self.created,
            "updated": self.updated,
            "accounts_created": self.accounts_created,
            "enrolled": self.reaction.enrolled,
            "exited": self.reaction.exited,
            "applied": self.applied,
            "dry_run": self.dry_run,
            "errors": [e.as_dict() for e in self.errors],
        }


IMPORT_CHUNK = 1000


def resolve_accounts(session: Session, names: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """What a file's account column says → the account's external id. An
    external id wins; otherwise the display name (员工账号 as the UI shows it,
    e.g. 客服小王) when exactly one account has it. Returns (resolved,
    ambiguous names)."""
    resolved: dict[str, str] = {}
    ambiguous: set[str] = set()
    for chunk in chunked(list(names), 500):
        by_ext = set(
            session.execute(
                select(col(Account.external_id)).where(col(Account.external_id).in_(chunk))
            ).scalars()
        )
        resolved.update({n: n for n in by_ext})
        rest = [n for n in chunk if n not in by_ext]
        if not rest:
            continue
        found: dict[str, list[str]] = {}
        for name, ext in session.execute(
            select(col(Account.name), col(Account.external_id)).where(col(Account.name).in_(rest))
        ).all():
            found.setdefault(name, []).append(ext)
        for name, exts in found.items():
            if len(exts) == 1:
                resolved[name] = exts[0]
            else:
                ambiguous.add(name)
    return resolved, ambiguous


def apply_import(
    session: Session,
    parsed: ParsedCsv,
    now: datetime,
    *,
    react: changes.Reactor,
    allow_partial: bool = False,
    create_accounts: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write parsed CSV rows as contacts through the audience unit of work; their
    tags trigger SOPs like any tag.

    All or nothing by default: with any row in error nothing is written
    (``applied`` False). ``allow_partial`` writes the good rows. Unknown accounts
    are row errors unless ``create_accounts``. Importing does not make anyone a
    *new* friend, so new-friend SOPs do not start. A dry run is this followed by
    the caller's rollback.
    """
    report = ImportReport(rows=parsed.total, errors=list(parsed.errors))
    file_error = any(e.field == "file" or e.line <= 1 for e in parsed.errors)
    rows = parsed.rows
    names = sorted({r.account for r in rows if r.account})
    resolved, ambiguous = resolve_accounts(session, names)
    if ambiguous:
        report.errors += [
            RowError(
                row.line,
                row.account_column,
                f"account name {row.account!r} is shared by several accounts; "
                "use the account's external id",
            )
            for row in rows
            if row.account in ambiguous
        ]
        rows = [row for row in rows if row.account not in ambiguous]
    rows = [
        replace(row, account=resolved.get(row.account, row.account)) if row.account else row
        for row in rows
    ]
    missing = [n for n in names if n not in resolved and n not in ambiguous]
    if missing and not create_accounts:
        bad = set(missing)
        report.errors += [
            RowError(
                row.line,
                row.account_column,
                f"unknown account {row.account!r}; register it first or import with "
                "--create-accounts",
            )
            for row in rows
            if row.account in bad
        ]
        rows = [row for row in rows if row.account not in bad]
    report.errors.sort(key=lambda e: e.line)
    report.valid = len(rows)
    if file_error or (report.errors and not allow_partial) or not rows:
        return report
    if missing and create_accounts:
        for name in missing:
            audiences_service.ensure_account(session, name)
        report.accounts_created = missing
    for chunk in chunked(rows, IMPORT_CHUNK):
        done = changes.apply(session, _row_events(chunk), now, react=react)
        report.created += done.applied.created
        report.updated += done.applied.updated
        report.reaction.add(done.reaction)
        report.imported += len(chunk)
        if progress:
            progress(len(chunk))
    report.applied = True
    return report


def _row_events(rows: Sequence[ImportRow]) -> list[Any]:
    events: list[Any] = []
    for row in rows:
        events.append(
            ContactUpdated(
                kind="contact_updated",
                account=row.account,
                external_id=row.external_id,
                name=row.name,
                attributes=row.attributes or None,
                timezone=row.timezone,
                status=row.status,  # type: ignore[arg-type]
                joined_at=row.joined_at,
                create_missing=True,
            )
        )
        if row.tags:
            events.append(
                TagAdded(
                    kind="tag_added",
                    account=row.account,
                    external_id=row.external_id,
                    tags=row.tags,
                )
            )
    return events
