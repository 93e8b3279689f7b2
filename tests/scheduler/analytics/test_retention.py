"""Retention archives only finished deliveries past the cutoff, never pending
ones, and the statistics (from the rollups) are the same before and after."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from analytics_world import build_world
from freezegun import freeze_time
from sqlalchemy import select
from sqlmodel import Session
from typer.testing import CliRunner

from api.cli import app as cli
from scheduler.analytics import log, stats
from scheduler.analytics.retention import run_retention
from scheduler.analytics.stats import StatsFilter
from scheduler.outbox.models import Delivery

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 6, 1, 4, 0, tzinfo=UTC)


@pytest.fixture
def retention_settings(settings, tmp_path):
    return settings.model_copy(
        update={"retention_days": 30, "archive_dir": str(tmp_path / "archive")}
    )


@pytest.fixture
def world(engine, clock):
    clock.set(NOW)
    return build_world(engine, NOW)


def live_ids(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Delivery.id)).scalars())  # type: ignore[call-overload]


def report(engine, template_id: int, **filters):
    with Session(log.read_snapshot(engine)) as session:
        return stats.template_stats(session, StatsFilter(template_id, **filters), now=NOW, zone=SH)


def comparable(r: stats.TemplateStats) -> dict:
    out = asdict(r)
    out.pop("settled_before")
    return out


def test_archives_only_finished_rows_past_the_cutoff(world, engine, clock, retention_settings):
    old = NOW - timedelta(days=45)
    c = world.contacts
    archived = [
        world.add(c[0], due_at=old, late=timedelta(milliseconds=250)),
        world.add(c[1], due_at=old + timedelta(hours=5), status="failed", reason="HTTP 400"),
        world.add(c[2], due_at=old + timedelta(days=1), status="missed", reason="grace"),
        world.add(world.groups[0], due_at=old + timedelta(days=2), late=timedelta(seconds=3)),
        world.add(c[3], due_at=old, status="cancelled", reason="contact deleted"),
    ]
    kept = [
        # pending however old: the scheduler still owns it
        world.add(c[0], due_at=old - timedelta(days=10), status="scheduled"),
        world.add(c[1], due_at=old, status="claimed"),
        world.add(c[2], due_at=old, status="sending"),
        # due long ago but finished recently (a late retry): not older than 30 days
        world.add(c[3], due_at=old, status="failed", finished_at=NOW - timedelta(days=2)),
        # recent
        world.add(c[4], due_at=NOW - timedelta(days=3)),
        world.add(c[4], due_at=NOW - timedelta(days=29, hours=23)),
        # finished long ago (cancelled ahead of time) but due recently
        world.add(c[4], due_at=NOW - timedelta(days=1), status="cancelled", finished_at=old),
    ]
    before = {
        t: comparable(report(engine, t)) for t in (world.friend_template, world.group_template)
    }
    by_day = {t: comparable(report(engine, t, interval="day")) for t in (world.friend_template,)}

    result = run_retention(engine, clock, retention_settings)

    assert result.archived == len(archived)
    assert live_ids(engine) == {r.id for r in kept}
    assert result.cutoff == NOW - timedelta(days=30)
    # the statistics, from the rollups now, are exactly what they were
    for template_id, was in before.items():
        assert comparable(report(engine, template_id)) == was
    assert (
        comparable(report(engine, world.friend_template, interval="day"))
        == by_day[world.friend_template]
    )

    # one gzip'd NDJSON file per local due day, each row as the log shows it
    files = {Path(f).name: f for f in result.files}
    assert sorted(files) == [
        "deliveries-2027-04-17.ndjson.gz",
        "deliveries-2027-04-18.ndjson.gz",
        "deliveries-2027-04-19.ndjson.gz",
    ]
    lines = []
    for path in files.values():
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines += [json.loads(line) for line in fh]
    assert sorted(x["id"] for x in lines) == sorted(r.id for r in archived)
    first = next(x for x in lines if x["id"] == archived[0].id)
    assert first["status"] == "sent" and first["target_name"] == "张三"
    assert first["template_name"] == "新好友 SOP" and first["lateness_seconds"] == 0.25

    # again: nothing more to do, nothing counted twice, files untouched
    sizes = {f: Path(f).stat().st_size for f in result.files}
    again = run_retention(engine, clock, retention_settings)
    assert again.archived == 0 and again.rollup.settled == 0
    assert {f: Path(f).stat().st_size for f in result.files} == sizes
    assert comparable(report(engine, world.friend_template)) == before[world.friend_template]


def test_a_held_row_is_archived_once_it_finishes(world, engine, clock, retention_settings):
    backlog = world.add(world.contacts[0], due_at=NOW - timedelta(days=40), status="scheduled")
    assert run_retention(engine, clock, retention_settings).archived == 0
    assert backlog.id in live_ids(engine)

    with engine.begin() as conn:  # the scheduler finally gives up on it
        conn.execute(
            Delivery.__table__.update()  # type: ignore[attr-defined]
            .where(Delivery.__table__.c.id == backlog.id)  # type: ignore[attr-defined]
            .values(status="missed", reason="not sent within its grace period", finished_at=NOW)
        )
    clock.advance(timedelta(days=31))
    result = run_retention(engine, clock, retention_settings)
    assert result.archived == 1 and backlog.id not in live_ids(engine)
    totals = report(engine, world.friend_template).totals
    assert (totals.deliveries, totals.missed, totals.pending) == (1, 1, 0)


def test_zero_days_keeps_everything_but_still_rolls_up(world, engine, clock, retention_settings):
    world.add(world.contacts[0], due_at=NOW - timedelta(days=400))
    result = run_retention(
        engine, clock, retention_settings.model_copy(update={"retention_days": 0})
    )
    assert result.archived == 0 and result.cutoff is None and result.rollup.settled == 1
    assert len(live_ids(engine)) == 1


def test_cli_retention_run(world, engine, settings, tmp_path, monkeypatch):
    # The CLI reads the system clock: frozen at NOW, so the first rollup walks
    # the 45 days since the row, not the years since a fixed date.
    world.add(world.contacts[0], due_at=NOW - timedelta(days=45))
    monkeypatch.setenv("SOPBOT_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SOPBOT_ARCHIVE_DIR", str(tmp_path / "cli-archive"))
    with freeze_time(NOW):
        result = CliRunner().invoke(cli, ["retention", "run", "--days", "30"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["archived"] == 1
        assert out["files"][0].endswith("deliveries-2027-04-17.ndjson.gz")
        assert live_ids(engine) == set()
        rolled = CliRunner().invoke(cli, ["retention", "rollup"])
    assert rolled.exit_code == 0 and json.loads(rolled.output)["settled"] == 0


async def test_the_scheduler_keeps_the_rollups_current(world, engine, clock, settings):
    from scheduler.runtime import JOB_ROLLUP, SchedulerRuntime

    world.add(world.contacts[0], due_at=NOW - timedelta(days=2))
    runtime = SchedulerRuntime(engine, clock, settings)
    assert runtime.build_scheduler().get_job(JOB_ROLLUP) is not None
    assert (await runtime.rollup_tick()).settled == 1
    assert (await runtime.rollup_tick()).settled == 0  # once only
    off = SchedulerRuntime(
        engine, clock, settings.model_copy(update={"rollup_interval_seconds": 0})
    )
    assert off.build_scheduler().get_job(JOB_ROLLUP) is None
