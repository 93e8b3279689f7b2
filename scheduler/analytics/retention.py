"""Roll-ups and retention of the delivery log.

``roll_up`` moves finished, final deliveries into the rollup tables and advances
the watermark (see ``scheduler.analytics.stats`` and ``scheduler.analytics.models``); it is
cheap to run often (every few minutes) and keeps statistics fast.
``run_retention`` rolls up, then archives the settled deliveries finished and due
more than ``retention_days`` ago — one gzip'd NDJSON file per local due day under
``archive_dir`` — and deletes them from ``deliveries``. Pending deliveries are
never touched, and since only settled rows are archived the rollups (and so the
statistics) are the same before and after.

Both are plain functions of ``(engine, clock, settings)``, safe to run from the
CLI, a cron job or a scheduler maintenance job, in any number of processes: each
step is one transaction that first locks the watermark row.

Final: a delivery is final when it is in a terminal status and finished (or, for
a row with no finish time, due) more than ``SETTLE`` ago. The only change a
terminal row can still see is a late channel answer for an ``unknown`` one,
which arrives within a lease (minutes), well inside ``SETTLE``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, func, literal, select, tuple_, update
from sqlalchemy.engine import Connection, Engine

from audiences.tables import CONTACTS, GROUPS
from scheduler.analytics.log.entries import read_entries
from scheduler.analytics.stats.figures import (
    hour_number,
    hour_start,
    lateness_bucket_sql,
)
from scheduler.analytics.stats.live import sent_lateness_ms
from scheduler.analytics.stats.settled import ACCOUNT_ROLLUPS, HOLDS, ROLLUPS, STATE, Watermark
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES
from sopbot.clock import Clock
from sopbot.db import reader
from sopbot.settings import Settings
from sopbot.sql import insert_of, unindexed

S = DeliveryStatus
SETTLE = timedelta(hours=1)
ID_STEP = 100_000  # new rows looked at per transaction
DUE_STEP = timedelta(days=1)  # due time advanced per transaction
ARCHIVE_CHUNK = 5_000  # rows archived and deleted per transaction


@dataclass
class RollupResult:
    settled: int = 0  # deliveries added to the rollups by this run
    held: int = 0  # deliveries below the watermark still waiting to be final
    settled_max_id: int = 0
    settled_before: datetime | None = None


@dataclass
class RetentionResult:
    rollup: RollupResult
    cutoff: datetime | None = None  # None: retention is off (retention_days = 0)
    archived: int = 0
    files: list[str] = field(default_factory=list)


# -- the watermark row ------------------------------------------------------------------


@contextmanager
def _step(engine: Engine, now: datetime) -> Iterator[tuple[Connection, Watermark]]:
    """One transaction holding the watermark row: SQLite's BEGIN IMMEDIATE takes
    the write lock, PostgreSQL locks the row (FOR UPDATE), so concurrent runs
    queue instead of counting the same deliveries twice."""
    with engine.begin() as conn:
        conn.execute(
            insert_of(conn, STATE)
            .values(id=1, settled_max_id=0, settled_before=None, updated_at=now)
            .on_conflict_do_nothing()
        )
        row = conn.execute(
            select(STATE.c.settled_max_id, STATE.c.settled_before)
            .where(STATE.c.id == 1)
            .with_for_update()
        ).one()
        yield conn, Watermark(int(row[0]), row[1])


def _save(conn: Connection, mark: Watermark, now: datetime) -> None:
    conn.execute(
        update(STATE)
        .where(STATE.c.id == 1)
        .values(settled_max_id=mark.max_id, settled_before=mark.before, updated_at=now)
    )


# -- rolling up -------------------------------------------------------------------------


def roll_up(engine: Engine, clock: Clock, settings: Settings) -> RollupResult:
    """Add every delivery that has become final to the rollups and advance the
    watermark to the last whole hour at least ``SETTLE`` ago."""
    now = clock.now()
    final_before = now - SETTLE
    target = final_before.replace(minute=0, second=0, microsecond=0)
    zone = ZoneInfo(settings.default_timezone)
    result = RollupResult()
    # Only rows created SETTLE ago count as absorbed: on PostgreSQL an id may
    # commit after a higher one, but not an hour after.
    with reader(engine).connect() as conn:
        top = conn.execute(
            select(DELIVERIES.c.id)
            .where(DELIVERIES.c.created_at < final_before)
            .order_by(DELIVERIES.c.id.desc())
            .limit(1)
        ).scalar()
        first_due = conn.execute(select(func.min(DELIVERIES.c.due_at))).scalar()
    top = int(top or 0)

    with _step(engine, now) as (conn, mark):
        if mark.before is None:
            # Nothing is due before the first row: the settled set starts empty.
            start = first_due.replace(minute=0, second=0, microsecond=0) if first_due else target
            mark = Watermark(mark.max_id, min(start, target))
            _save(conn, mark, now)
    while True:  # rows added since the last run, below the due watermark
        with _step(engine, now) as (conn, mark):
            if mark.max_id >= top:
                break
            upper = min(top, mark.max_id + ID_STEP)
            assert mark.before is not None
            result.settled += _settle(
                conn,
                [
                    DELIVERIES.c.id > mark.max_id,
                    DELIVERIES.c.id <= upper,
                    unindexed(DELIVERIES.c.due_at, _sqlite(conn)) < mark.before,
                ],
                final_before,
                zone,
            )
            _save(conn, Watermark(upper, mark.before), now)
    with _step(engine, now) as (conn, mark):  # held rows that have become final
        result.settled += _settle(
            conn,
            [DELIVERIES.c.id.in_(select(HOLDS.c.delivery_id))],
            final_before,
            zone,
            from_holds=True,
        )
    while True:  # the due watermark, a day per transaction
        with _step(engine, now) as (conn, mark):
            assert mark.before is not None
            if mark.before >= target:
                break
            step_to = min(target, mark.before + DUE_STEP)
            result.settled += _settle(
                conn,
                [
                    unindexed(DELIVERIES.c.id, _sqlite(conn)) <= mark.max_id,
                    DELIVERIES.c.due_at >= mark.before,
                    DELIVERIES.c.due_at < step_to,
                ],
                final_before,
                zone,
            )
            _save(conn, Watermark(mark.max_id, step_to), now)
    with reader(engine).connect() as conn:
        result.held = int(conn.execute(select(func.count()).select_from(HOLDS)).scalar_one())
        final = conn.execute(select(STATE.c.settled_max_id, STATE.c.settled_before)).one()
    result.settled_max_id, result.settled_before = int(final[0]), final[1]
    return result


def _final(final_before: datetime, sqlite: bool) -> Any:
    return and_(
        unindexed(DELIVERIES.c.status, sqlite).in_(S.TERMINAL),
        func.coalesce(DELIVERIES.c.finished_at, DELIVERIES.c.due_at) < final_before,
    )


_KEYS = ("hour", "template_id", "version_id", "touchpoint_id", "channel", "status", "reason")


def _settle(
    conn: Connection,
    candidates: Sequence[Any],
    final_before: datetime,
    zone: ZoneInfo,
    *,
    from_holds: bool = False,
) -> int:
    """Roll up the final deliveries among ``candidates``; hold back the rest."""
    dialect = conn.dialect.name
    final = _final(final_before, dialect == "sqlite")
    # The final rows once, with their due hour and lateness computed once (a
    # materialized CTE: SQLite would otherwise inline the expressions per use).
    rows = (
        select(
            hour_number(DELIVERIES.c.due_at, dialect).label("hour"),
            DELIVERIES.c.template_id,
            DELIVERIES.c.version_id,
            DELIVERIES.c.touchpoint_id,
            DELIVERIES.c.channel,
            DELIVERIES.c.status,
            DELIVERIES.c.reason,
            DELIVERIES.c.target_kind,
            DELIVERIES.c.target_id,
            sent_lateness_ms(dialect).label("late_ms"),
        )
        .where(*candidates, final)
        .cte("settling")
        .prefix_with("MATERIALIZED")
    )
    keys = [rows.c[name] for name in _KEYS]
    late = rows.c.late_ms
    groups = conn.execute(
        select(*keys, func.count(), func.count(late), func.sum(late), func.max(late)).group_by(
            *keys
        )
    ).all()
    histograms: dict[tuple[Any, ...], Counter[str]] = defaultdict(Counter)
    bucket = lateness_bucket_sql(late)
    for *key, bucket_ms, n in conn.execute(
        select(*keys, bucket, func.count()).where(late.is_not(None)).group_by(*keys, bucket)
    ).all():
        histograms[tuple(key)][str(int(bucket_ms))] += int(n)

    rollups = []
    for *key, n, late_n, late_sum, late_max in groups:
        number, template_id, version_id, touchpoint_id, channel, status, reason = key
        start = hour_start(int(number))
        histogram = histograms.get(tuple(key))
        rollups.append(
            {
                "day": start.astimezone(zone).date(),
                "hour_start": start,
                "template_id": template_id,
                "version_id": version_id,
                "touchpoint_id": touchpoint_id,
                "channel": channel,
                "status": status,
                "reason": reason,
                "deliveries": int(n),
                "late_count": int(late_n or 0),
                "late_sum_ms": int(late_sum or 0),
                "late_max_ms": None if late_max is None else int(late_max),
                "late_histogram": dict(histogram) if histogram else None,
            }
        )
    if rollups:
        conn.execute(ROLLUPS.insert(), rollups)
        conn.execute(ACCOUNT_ROLLUPS.insert(), _account_rollups(conn, rows, zone))

    not_final = select(DELIVERIES.c.id).where(*candidates, ~final)
    if dialect == "sqlite":
        not_final = not_final.where(
            DELIVERIES.c.id.is_not(None)
        )  # an upsert's SELECT needs a WHERE
    conn.execute(
        insert_of(conn, HOLDS).from_select(["delivery_id"], not_final).on_conflict_do_nothing()
    )
    if from_holds:
        conn.execute(
            delete(HOLDS).where(
                HOLDS.c.delivery_id.in_(select(DELIVERIES.c.id).where(*candidates, final))
            )
        )
    return sum(int(g[7]) for g in groups)


def _account_rollups(conn: Connection, rows: Any, zone: ZoneInfo) -> list[dict[str, Any]]:
    """The settling deliveries per local due day and owning staff account."""
    account = func.coalesce(CONTACTS.c.account_id, GROUPS.c.owner_account_id)
    keys = (
        rows.c.hour,
        rows.c.template_id,
        rows.c.version_id,
        rows.c.touchpoint_id,
        rows.c.channel,
        account,
        rows.c.status,
    )
    joined = rows.outerjoin(
        CONTACTS, and_(rows.c.target_kind == "contact", CONTACTS.c.id == rows.c.target_id)
    ).outerjoin(GROUPS, and_(rows.c.target_kind == "group", GROUPS.c.id == rows.c.target_id))
    per_day: Counter[tuple[Any, ...]] = Counter()
    for number, *key, n in conn.execute(
        select(*keys, func.count()).select_from(joined).group_by(*keys)
    ).all():
        per_day[(hour_start(int(number)).astimezone(zone).date(), *key)] += int(n)
    return [
        {
            "day": day,
            "template_id": template_id,
            "version_id": version_id,
            "touchpoint_id": touchpoint_id,
            "channel": channel,
            "account_id": account_id,
            "status": status,
            "deliveries": n,
        }
        for (
            day,
            template_id,
            version_id,
            touchpoint_id,
            channel,
            account_id,
            status,
        ), n in per_day.items()
    ]


# -- retention --------------------------------------------------------------------------


class _Archive:
    """Per-day gzip'd NDJSON files, appended to one gzip member per transaction;
    ``undo`` truncates them back if the transaction does not commit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sizes: dict[Path, int | None] = {}

    def path(self, day: date) -> Path:
        return self.directory / f"deliveries-{day.isoformat()}.ndjson.gz"

    def append(self, day: date, lines: list[str]) -> Path:
        path = self.path(day)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes.setdefault(path, path.stat().st_size if path.exists() else None)
        with open(path, "ab") as fh:
            fh.write(gzip.compress("".join(lines).encode(), compresslevel=6))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def done(self) -> None:
        self._sizes.clear()

    def undo(self) -> None:
        for path, size in self._sizes.items():
            if size is None:
                path.unlink(missing_ok=True)
            else:
                with open(path, "r+b") as fh:
                    fh.truncate(size)
        self._sizes.clear()


def run_retention(
    engine: Engine, clock: Clock, settings: Settings, *, days: int | None = None
) -> RetentionResult:
    """Roll up, then archive and delete settled deliveries finished and due more
    than ``days`` (default ``settings.retention_days``; 0 = keep all) ago."""
    result = RetentionResult(rollup=roll_up(engine, clock, settings))
    days = settings.retention_days if days is None else days
    if days <= 0:
        return result
    now = clock.now()
    cutoff = result.cutoff = now - timedelta(days=days)
    zone = ZoneInfo(settings.default_timezone)
    archive = _Archive(Path(settings.archive_dir))
    files: set[str] = set()
    after: tuple[datetime, int] | None = None
    while True:
        try:
            with _step(engine, now) as (conn, mark):
                if mark.before is None:
                    break
                sqlite = _sqlite(conn)
                where = [
                    DELIVERIES.c.due_at < min(cutoff, mark.before),
                    unindexed(DELIVERIES.c.id, sqlite) <= mark.max_id,
                    DELIVERIES.c.id.not_in(select(HOLDS.c.delivery_id)),
                    _final(cutoff, sqlite),
                ]
                if after is not None:
                    where.append(
                        tuple_(DELIVERIES.c.due_at, DELIVERIES.c.id) > tuple_(*_typed(after))
                    )
                entries = read_entries(
                    conn, where, (DELIVERIES.c.due_at, DELIVERIES.c.id), ARCHIVE_CHUNK
                )
                if not entries:
                    break
                by_day: dict[date, list[str]] = defaultdict(list)
                for entry in entries:
                    by_day[entry.due_at.astimezone(zone).date()].append(
                        json.dumps(entry.as_json(), ensure_ascii=False, separators=(",", ":"))
                        + "\n"
                    )
                for day, lines in sorted(by_day.items()):
                    files.add(str(archive.append(day, lines)))
                ids = [e.id for e in entries]
                conn.execute(delete(DELIVERIES).where(DELIVERIES.c.id.in_(ids)))
                after = (entries[-1].due_at, entries[-1].id)
        except BaseException:
            archive.undo()
            raise
        archive.done()
        result.archived += len(entries)
    result.files = sorted(files)
    return result


def _sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _typed(after: tuple[datetime, int]) -> tuple[Any, Any]:
    return literal(after[0], DELIVERIES.c.due_at.type), literal(after[1], DELIVERIES.c.id.type)
