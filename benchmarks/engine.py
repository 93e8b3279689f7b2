"""Engine benchmark: sopbot's outbox scheduler measured end to end.

Five figures, each from the real code paths (``scheduler.outbox.service.enroll``, the
``Dispatcher`` and the APScheduler-driven ``SchedulerRuntime``) with the mock channel:

* ``enroll_per_s`` -- delivery rows written per second while enrolling 100,000 contacts
  into a published 10-touchpoint template (1,000,000 deliveries), 10,000 targets per
  transaction, the way a bulk enroll of a segment runs. The contacts are inserted first
  (Core executemany, not timed).
* ``peak_rss_mb`` -- peak RSS of this process right after that enrollment.
* ``dispatch_per_s`` -- sends per second draining 100,000 due deliveries (1 touchpoint,
  Jinja ``{{ contact.name }}`` rendered per message) through a zero-latency mock channel
  that records every message, ``claim_batch_size`` 1000, on a ``ManualClock``. Verified:
  every delivery ``sent`` and exactly one mock record per delivery.
* ``burst_p99_late_s`` -- 10,000 deliveries due in the same second about 3 s ahead, sent
  by the real ``SchedulerRuntime.start()`` loop on the real ``SystemClock`` (tick every
  second); p99 of ``sent_at - due_at`` read back from the delivery rows. The worker
  has sent before, as one that has been running has: 1,000 deliveries of another SOP
  are due when it starts (its pace is timed, so it claims and renders the burst
  ahead of its instant, ``prepare_ahead_seconds``); they are not counted.

* ``cron_plan_s`` -- seconds to plan one daily cron occurrence (``plan_cron``, one
  ``INSERT ... SELECT``) for 100,000 enrolled groups. Verified: one scheduled delivery
  per group.

The naive one-APScheduler-job-per-message peer (``benchmarks.naive_peer``) enrolls and
dispatches at its own (smaller) defaults and takes the same burst (10,000 due in one
second) in the same run; ratios are ours / naive for throughput and naive / ours for
lateness. ``benchmarks.guard`` holds CI to half of the README's quick-run ratios.

Every phase gets a fresh database: a temporary SQLite file in WAL mode (removed
afterwards), or with ``--database-url postgresql+psycopg://...`` a dedicated database
(``sopbot_bench`` by default, created if missing) whose tables are dropped and created
again per phase, so the test suite's database is never touched.

Run from the repository root::

    python -m benchmarks.engine --json            # full size (a few minutes)
    python -m benchmarks.engine --quick --json    # 10x smaller, a CI smoke run
    python -m benchmarks.engine --profile-dir /tmp/prof --skip-naive

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object.
``--profile-dir`` wraps the timed enroll and dispatch sections in cProfile (figures are
then distorted; ``asyncio.to_thread`` runs inline so the dispatcher's worker-thread code
is captured too) and writes ``enroll.prof`` / ``dispatch.prof`` plus a top-function
summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as dist_version
from typing import Any

import httpx
import sqlalchemy
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel

from audiences.models import Account, Contact
from benchmarks.machine import describe
from channels.models import MockMessage
from channels.registry import ensure_instance
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.runtime import SchedulerRuntime
from sop_templates import service as templates_service
from sopbot.clock import Clock, ManualClock, SystemClock
from sopbot.db import (
    create_all,
    import_models,
    make_engine,
    reader,
    session_scope,
    wait_for_checkpoints,
)
from sopbot.settings import Settings

#: Every ManualClock phase starts here (08:00 in Asia/Shanghai, the template zone).
CLOCK_START = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
TIMEZONE = "Asia/Shanghai"
CHANNEL = "mock"
WORKER_ID = "bench-worker"
CLAIM_BATCH_SIZE = 1000
BURST_WARM_UP = 1_000  # deliveries the worker sends before the burst (not counted)
TICK_SECONDS = 1.0
ENROLL_CHUNK = 10_000
CONTACT_INSERT_CHUNK = 10_000
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_PG_DATABASE = "sopbot_bench"

TARGETS: dict[str, float] = {
    "enroll_per_s": 75_000,
    "dispatch_per_s": 10_000,
    "burst_p99_late_s": 1.0,
    "peak_rss_mb": 300,
    "cron_plan_s": 3.0,
}

#: The 10-touchpoint SOP for the enroll phase: offsets and day-N-at times, all in the
#: future of CLOCK_START for anchors up to 10 minutes before it.
ENROLL_TOUCHPOINTS: list[tuple[str, str]] = [
    ("t01-questionnaire", "+1h"),
    ("t02-coupon", "+3h"),
    ("t03-evening-reminder", "day 2 20:00"),
    ("t04-check-in", "+1d6h"),
    ("t05-morning-tip", "day 3 09:00"),
    ("t06-case-study", "+2d"),
    ("t07-live-class", "day 4 19:30"),
    ("t08-survey", "+5d"),
    ("t09-weekly-menu", "day 7 11:00"),
    ("t10-renewal", "day 14 10:00"),
]


def _log(msg: str) -> None:
    print(f"[engine] {msg}", file=sys.stderr, flush=True)


# -- sizes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    enroll_contacts: int
    enroll_touchpoints: int
    dispatch: int
    burst: int
    naive_enroll: int
    naive_dispatch: int
    naive_burst: int
    cron_groups: int

    @classmethod
    def full(cls) -> Sizes:
        # The naive peer enrolls and dispatches at its own defaults (5000 / 5000);
        # its burst is the same 10,000 in one second as ours.
        return cls(100_000, len(ENROLL_TOUCHPOINTS), 100_000, 10_000, 5000, 5000, 10_000, 100_000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(10_000, len(ENROLL_TOUCHPOINTS), 10_000, 1_000, 500, 500, 1_000, 10_000)

    def as_dict(self) -> dict[str, int]:
        return {
            "enroll_contacts": self.enroll_contacts,
            "enroll_touchpoints": self.enroll_touchpoints,
            "enroll_deliveries": self.enroll_contacts * self.enroll_touchpoints,
            "enroll_chunk": ENROLL_CHUNK,
            "dispatch": self.dispatch,
            "burst": self.burst,
            "naive_enroll": self.naive_enroll,
            "naive_dispatch": self.naive_dispatch,
            "naive_burst": self.naive_burst,
            "cron_groups": self.cron_groups,
        }


# -- databases --------------------------------------------------------------------


class Databases:
    """Hands out a fresh, empty database per phase and cleans up after it."""

    def __init__(self, database_url: str | None, pg_database: str) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._pg_url: str | None = None
        if database_url is None:
            self.kind = "sqlite"
            self._tmpdir = tempfile.TemporaryDirectory(prefix="sopbot-bench-")
        elif database_url.startswith("postgresql"):
            self.kind = "postgresql"
            self._pg_url = _ensure_pg_database(database_url, pg_database)
        else:
            raise SystemExit(f"unsupported --database-url {database_url!r} (sqlite is the default)")

    @property
    def display_url(self) -> str:
        if self._pg_url is not None:
            return make_url(self._pg_url).render_as_string(hide_password=True)
        return "sqlite:///<tempdir>/<phase>.db"

    @contextlib.contextmanager
    def fresh(self, phase: str) -> Iterator[Engine]:
        import_models()
        if self._pg_url is not None:
            engine = make_engine(self._pg_url)
            SQLModel.metadata.drop_all(engine)
            SQLModel.metadata.create_all(engine)
            try:
                yield engine
            finally:
                SQLModel.metadata.drop_all(engine)  # the next phase (or nobody) starts clean
                engine.dispose()
            return
        assert self._tmpdir is not None
        path = os.path.join(self._tmpdir.name, f"{phase}.db")
        engine = make_engine(f"sqlite:///{path}")
        create_all(engine)
        try:
            yield engine
        finally:
            engine.dispose()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path + suffix)

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _ensure_pg_database(url: str, name: str) -> str:
    """Create database ``name`` next to ``url``'s (if missing); return a URL to it."""
    base = make_url(url)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                _log(f"creating PostgreSQL database {name!r}")
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


# -- fixtures shared by the phases ----------------------------------------------------


def _settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        worker_id=WORKER_ID,
        claim_batch_size=CLAIM_BATCH_SIZE,
        tick_seconds=TICK_SECONDS,
        _env_file=None,  # type: ignore[call-arg]
    )


def _engine_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _setup_channel(engine: Engine) -> None:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "mock", {"persist": True, "latency_ms": 0})


def _publish(engine: Engine, name: str, touchpoints: list[tuple[str, str]], now: datetime) -> int:
    spec = {
        "name": name,
        "target": "contact",
        "timezone": TIMEZONE,
        "anchor": "join",
        "channel": CHANNEL,
        "touchpoints": [
            {"name": tp_name, "timing": timing, "content": [f"{{{{ contact.name }}}}，{tp_name}"]}
            for tp_name, timing in touchpoints
        ],
    }
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, now)
        templates_service.freeze_draft(session, template.id, now)  # type: ignore[arg-type]
        return template.id  # type: ignore[return-value]


def _insert_contacts(engine: Engine, n: int, joined_at: datetime) -> list[int]:
    """Bulk-insert ``n`` contacts of one staff account (Core executemany); return their ids."""
    with engine.begin() as conn:
        account_id = conn.execute(
            insert(Account).values(external_id="bench_staff", name="客服小王", channel=CHANNEL)
        ).inserted_primary_key[0]
    table = Contact.__table__  # type: ignore[attr-defined]
    for start in range(0, n, CONTACT_INSERT_CHUNK):
        rows = [
            {
                "external_id": f"wm_bench_{i:07d}",
                "account_id": account_id,
                "name": f"客户{i:07d}",
                "joined_at": joined_at,
                "status": "active",
                "timezone": None,
                "attributes": {},
            }
            for i in range(start, min(n, start + CONTACT_INSERT_CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
    with engine.connect() as conn:
        return list(conn.execute(select(table.c.id).order_by(table.c.id)).scalars())


def _enroll_all(
    engine: Engine,
    template_id: int,
    targets: list[tuple[int, datetime]],
    now: datetime,
    chunk: int = ENROLL_CHUNK,
) -> scheduler_service.EnrollResult:
    """Enroll ``targets`` in chunks, one transaction each, as a bulk segment enroll does."""
    total = scheduler_service.EnrollResult()
    for start in range(0, len(targets), chunk):
        with session_scope(engine) as session:
            template = templates_service.get_template(session, template_id)
            part = scheduler_service.enroll(session, template, targets[start : start + chunk], now)
        total.enrolled += part.enrolled
        total.already += part.already
        total.deliveries += part.deliveries
        total.skipped += part.skipped
    return total


def _status_counts(engine: Engine) -> dict[str, int]:
    # A reader: polling progress must not queue for the write lock the
    # dispatcher being measured takes for every claim and outcome.
    with Session(reader(engine)) as session:
        return scheduler_service.delivery_counts(session)


def _mock_counts(engine: Engine) -> tuple[int, int]:
    """(mock messages recorded, distinct deliveries among them)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.count(MockMessage.delivery_id.distinct()))  # type: ignore[attr-defined]
        ).one()
    return int(row[0]), int(row[1])


def _http_client() -> httpx.AsyncClient:
    # The mock channel never calls out; anything that does gets a 599, not the network.
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(599)))


def _rss_now_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (same definition as the naive peer); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


# -- profiling ------------------------------------------------------------------------


class Profiler:
    """Optional cProfile around the timed sections; a no-op without a directory."""

    def __init__(self, directory: str | None, top: int = 30) -> None:
        self.directory = directory
        self.top = top
        if directory:
            os.makedirs(directory, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.directory:
            yield
            return
        profile = cProfile.Profile()
        with _inline_to_thread():
            profile.enable()
            try:
                yield
            finally:
                profile.disable()
        path = os.path.join(self.directory, f"{name}.prof")
        profile.dump_stats(path)
        for sort in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).strip_dirs().sort_stats(sort).print_stats(self.top)
            _log(f"profile {name} by {sort} ({path}):\n{out.getvalue()}")


@contextlib.contextmanager
def _inline_to_thread() -> Iterator[None]:
    """Run ``asyncio.to_thread`` work inline so one cProfile sees it (profiling only).

    The dispatcher awaits each ``to_thread`` call before the next, so with a
    zero-latency channel this changes where the work runs, not what it does.
    """
    original = asyncio.to_thread

    async def inline(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    asyncio.to_thread = inline  # type: ignore[assignment]
    try:
        yield
    finally:
        asyncio.to_thread = original


# -- phases ---------------------------------------------------------------------------


def phase_enroll(dbs: Databases, sizes: Sizes, profiler: Profiler) -> dict[str, Any]:
    n = sizes.enroll_contacts
    expected = n * sizes.enroll_touchpoints
    with dbs.fresh("enroll") as engine:
        clock = ManualClock(CLOCK_START)
        _setup_channel(engine)
        template_id = _publish(engine, "bench 10-step SOP", ENROLL_TOUCHPOINTS, clock.now())
        _log(f"enroll: inserting {n} contacts (not timed)")
        t0 = time.perf_counter()
        ids = _insert_contacts(engine, n, CLOCK_START)
        insert_s = time.perf_counter() - t0
        # Friends added over the last ten minutes; every touchpoint stays in the future.
        targets = [(cid, CLOCK_START - timedelta(seconds=i % 600)) for i, cid in enumerate(ids)]
        rss_before = _rss_now_mb()
        _log(
            f"enroll: {n} contacts in {insert_s:.2f}s; enrolling into "
            f"{sizes.enroll_touchpoints} touchpoints ({expected} deliveries)"
        )
        with profiler.section("enroll"):
            t0, c0 = time.perf_counter(), time.process_time()
            result = _enroll_all(engine, template_id, targets, clock.now())
            enroll_s, enroll_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        peak_rss = _peak_rss_mb()
        rss_after = _rss_now_mb()
        del targets, ids
        counts = _status_counts(engine)
        verified = (
            result.deliveries == expected
            and result.skipped == 0
            and counts.get(DeliveryStatus.SCHEDULED, 0) == expected
            and sum(counts.values()) == expected
        )
        _log(
            f"enroll: {result.deliveries} deliveries in {enroll_s:.2f}s = "
            f"{result.deliveries / enroll_s:,.0f}/s; peak RSS {peak_rss:.0f} MB; "
            f"verified={verified} {counts}"
        )
    return {
        "contacts_insert_s": insert_s,
        "enroll_s": enroll_s,
        "enroll_per_s": result.deliveries / enroll_s if enroll_s > 0 else math.inf,
        "enroll_cpu_s": enroll_cpu_s,
        "enroll_per_cpu_s": result.deliveries / enroll_cpu_s if enroll_cpu_s > 0 else math.inf,
        "enroll_contacts_per_s": result.enrolled / enroll_s if enroll_s > 0 else math.inf,
        "enroll_deliveries": result.deliveries,
        "peak_rss_mb": peak_rss,
        "rss_before_enroll_mb": rss_before,
        "rss_after_enroll_mb": rss_after,
        "enroll_verified": verified,
    }


async def _drain(runtime: SchedulerRuntime) -> Any:
    return await runtime.dispatcher.run_once(max_batches=10**9)


def phase_dispatch(dbs: Databases, sizes: Sizes, profiler: Profiler) -> dict[str, Any]:
    n = sizes.dispatch
    with dbs.fresh("dispatch") as engine:
        clock = ManualClock(CLOCK_START)
        _setup_channel(engine)
        template_id = _publish(engine, "bench welcome", [("welcome", "+0m")], clock.now())
        _log(f"dispatch: inserting {n} contacts and enrolling them (not timed)")
        ids = _insert_contacts(engine, n, CLOCK_START)
        result = _enroll_all(engine, template_id, [(cid, CLOCK_START) for cid in ids], clock.now())
        del ids
        # The setup's (and the enroll phase's) WAL checkpoints run in a thread
        # after their commits: let them finish before the timed drain.
        wait_for_checkpoints()
        clock.advance(seconds=1)  # everything is due now
        settings = _settings(_engine_url(engine))

        async def run() -> tuple[Any, float, float]:
            http = _http_client()
            try:
                runtime = SchedulerRuntime(engine, clock, settings, http=http)
                runtime.channels.get(CHANNEL)  # build the adapter before timing
                with profiler.section("dispatch"):
                    t0, c0 = time.perf_counter(), time.process_time()
                    stats = await _drain(runtime)
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
                return stats, elapsed, cpu
            finally:
                await http.aclose()

        _log(f"dispatch: draining {result.deliveries} due deliveries")
        stats, dispatch_s, dispatch_cpu_s = asyncio.run(run())
        counts = _status_counts(engine)
        recorded, distinct = _mock_counts(engine)
        sent = counts.get(DeliveryStatus.SENT, 0)
        verified = sent == n and sum(counts.values()) == n and recorded == n and distinct == n
        _log(
            f"dispatch: {sent} sent in {dispatch_s:.2f}s = {sent / dispatch_s:,.0f}/s "
            f"({stats.batches} batches); mock recorded {recorded}; verified={verified} {counts}"
        )
    return {
        "dispatch_s": dispatch_s,
        "dispatch_per_s": sent / dispatch_s if dispatch_s > 0 else math.inf,
        # This process's CPU (all threads): the rate on an otherwise idle machine.
        "dispatch_cpu_s": dispatch_cpu_s,
        "dispatch_per_cpu_s": sent / dispatch_cpu_s if dispatch_cpu_s > 0 else math.inf,
        "dispatch_sent": sent,
        "dispatch_batches": stats.batches,
        "dispatch_mock_recorded": recorded,
        "dispatch_verified": verified,
    }


def phase_burst(
    dbs: Databases, sizes: Sizes, timeout_s: float, enroll_per_s: float | None
) -> dict[str, Any]:
    n = sizes.burst
    clock: Clock = SystemClock()
    with dbs.fresh("burst") as engine:
        _setup_channel(engine)
        warm_id = _publish(engine, "bench warm-up", [("warm-up", "+0m")], clock.now())
        template_id = _publish(engine, "bench burst", [("burst", "+0m")], clock.now())
        ids = _insert_contacts(engine, n, clock.now())
        warm = min(BURST_WARM_UP, n)
        _enroll_all(engine, warm_id, [(cid, clock.now()) for cid in ids[:warm]], clock.now())
        # About 3 s ahead, on a whole second, with room to write the rows first
        # and for the first tick to send the warm-up.
        rate = enroll_per_s if enroll_per_s and math.isfinite(enroll_per_s) else 5_000.0
        lead = 3.0 + 1.5 * n / rate
        due = datetime.fromtimestamp(math.ceil(time.time() + lead), tz=UTC)
        _log(f"burst: {n} deliveries due at {due.isoformat()} (in {lead:.1f}s+)")
        _enroll_all(engine, template_id, [(cid, due) for cid in ids], clock.now())
        wait_for_checkpoints()  # the setup's, not the burst's
        del ids
        setup_overrun = clock.now() > due - timedelta(seconds=0.5)
        settings = _settings(_engine_url(engine))

        async def run() -> tuple[bool, float]:
            http = _http_client()
            runtime = SchedulerRuntime(engine, clock, settings, http=http)
            try:
                await runtime.start()
                deadline = time.monotonic() + max(0.0, (due - clock.now()).total_seconds())
                deadline += timeout_s
                while True:
                    counts = await asyncio.to_thread(_status_counts, engine)
                    pending = sum(counts.get(s, 0) for s in DeliveryStatus.PENDING)
                    if pending == 0:
                        return True, (clock.now() - due).total_seconds()
                    if time.monotonic() >= deadline:
                        return False, (clock.now() - due).total_seconds()
                    await asyncio.sleep(0.05)
            finally:
                await runtime.shutdown()
                await http.aclose()

        done, drained_after = asyncio.run(run())
        with engine.connect() as conn:
            rows = conn.execute(
                select(Delivery.sent_at, Delivery.due_at).where(  # type: ignore[call-overload]
                    Delivery.status == DeliveryStatus.SENT, Delivery.template_id == template_id
                )
            ).all()
        late = [(sent_at - due_at).total_seconds() for sent_at, due_at in rows]
        result = {
            "burst_sent": len(late),
            "burst_p50_late_s": _percentile(late, 50),
            "burst_p99_late_s": _percentile(late, 99),
            "burst_max_late_s": max(late) if late else math.nan,
            "burst_min_late_s": min(late) if late else math.nan,
            "burst_drained_after_due_s": drained_after,
            "burst_timed_out": not done,
            "burst_setup_overrun": setup_overrun,
            "burst_verified": done and len(late) == n,
        }
        _log(
            f"burst: {len(late)} sent; p50 {result['burst_p50_late_s']:.3f}s "
            f"p99 {result['burst_p99_late_s']:.3f}s max {result['burst_max_late_s']:.3f}s late"
            + (" (TIMED OUT)" if not done else "")
        )
    return result


def phase_cron(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    """Plan one daily cron occurrence for ``cron_groups`` enrolled groups: the
    planner's one ``INSERT ... SELECT`` per occurrence, timed."""
    n = sizes.cron_groups
    now = CLOCK_START
    with dbs.fresh("cron") as engine:
        _setup_channel(engine)
        spec = {
            "name": "bench daily menu",
            "target": "group",
            "timezone": TIMEZONE,
            "anchor": "join",
            "channel": CHANNEL,
            "touchpoints": [
                {"name": "menu", "timing": "cron 0 11 * * *", "content": "{{ group.name }} 菜单"}
            ],
        }
        with session_scope(engine) as session:
            template = templates_service.create_template(session, spec, now)
            templates_service.freeze_draft(session, template.id, now)  # type: ignore[arg-type]
            template_id = template.id
        _log(f"cron: enrolling {n} groups (not timed)")
        _enroll_all(engine, template_id, [(g, now) for g in range(1, n + 1)], now)  # type: ignore[arg-type]
        started = time.perf_counter()
        cpu = time.process_time()
        with session_scope(engine) as session:
            planned = scheduler_service.plan_cron(
                session, now, lookahead=timedelta(days=1), catch_up=timedelta(days=1)
            )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        counts = _status_counts(engine)
    verified = counts == {DeliveryStatus.SCHEDULED: n}
    _log(f"cron: one occurrence for {n} groups planned in {elapsed:.2f}s; verified={verified}")
    return {
        "cron_plan_s": elapsed,
        "cron_plan_cpu_s": cpu,
        "cron_planned": getattr(planned, "deliveries", None),
        "cron_verified": verified,
    }


def phase_naive(sizes: Sizes, timeout_s: float) -> dict[str, Any]:
    from benchmarks.naive_peer import run as naive_run

    _log(
        f"naive peer: enroll {sizes.naive_enroll}, dispatch {sizes.naive_dispatch}, "
        f"burst {sizes.naive_burst}"
    )
    return naive_run(
        sizes.naive_enroll, sizes.naive_dispatch, sizes.naive_burst, timeout_s=timeout_s
    )


# -- the run --------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    if not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON; they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def run(
    *,
    quick: bool = False,
    skip_naive: bool = False,
    database_url: str | None = None,
    pg_database: str = DEFAULT_PG_DATABASE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    """Run every phase once; return the result object (see the module docstring)."""
    t_start = time.perf_counter()
    machine = describe()
    sizes = Sizes.quick() if quick else Sizes.full()
    profiler = Profiler(profile_dir)
    dbs = Databases(database_url, pg_database)
    try:
        _log(f"database: {dbs.kind} ({dbs.display_url}); quick={quick}")
        enroll = phase_enroll(dbs, sizes, profiler)
        dispatch = phase_dispatch(dbs, sizes, profiler)
        burst = phase_burst(dbs, sizes, timeout_s, enroll["enroll_per_s"])
        cron = phase_cron(dbs, sizes)
    finally:
        dbs.close()
    naive = None if skip_naive else phase_naive(sizes, timeout_s)

    result: dict[str, Any] = {
        "engine": "sopbot_outbox",
        "database": dbs.kind,
        "quick": quick,
        "profiled": profiler.enabled,
        "n": sizes.as_dict(),
        "settings": {
            "claim_batch_size": CLAIM_BATCH_SIZE,
            "tick_seconds": TICK_SECONDS,
            "channel": "mock (latency 0, persist on)",
        },
        "versions": {
            "sqlmodel": dist_version("sqlmodel"),
            "apscheduler": dist_version("apscheduler"),
            "sqlite": sqlite3.sqlite_version,
        },
        "machine": machine,
        "host": {
            "loadavg_1m_start": machine["load_avg_start"],
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        },
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        **enroll,
        **dispatch,
        **burst,
        **cron,
        "verified": bool(
            enroll["enroll_verified"]
            and dispatch["dispatch_verified"]
            and burst["burst_verified"]
            and cron["cron_verified"]
        ),
    }
    if naive is not None:
        result["naive"] = naive
        result["ratio_enroll"] = _ratio(enroll["enroll_per_s"], naive["enroll_per_s"])
        result["ratio_dispatch"] = _ratio(dispatch["dispatch_per_s"], naive["dispatch_per_s"])
        result["ratio_burst_p99"] = _ratio(naive["burst_p99_late_s"], burst["burst_p99_late_s"])
        result["ratio_burst_p99_note"] = f"naive p99 / ours, both {sizes.burst} due in one second"
    result["targets"] = dict(TARGETS)
    result["meets_targets"] = {
        "enroll_per_s": enroll["enroll_per_s"] >= TARGETS["enroll_per_s"],
        "dispatch_per_s": dispatch["dispatch_per_s"] >= TARGETS["dispatch_per_s"],
        "burst_p99_late_s": burst["burst_verified"]
        and burst["burst_p99_late_s"] <= TARGETS["burst_p99_late_s"],
        "peak_rss_mb": enroll["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
        "cron_plan_s": cron["cron_verified"] and cron["cron_plan_s"] <= TARGETS["cron_plan_s"],
    }
    result["total_s"] = time.perf_counter() - t_start
    return _clean(result)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine",
        description="Benchmark sopbot's outbox engine: enroll, dispatch, burst lateness.",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes (CI smoke run)")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive peer")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL to benchmark on instead of a temp SQLite file; the run uses "
        f"a dedicated database next to it (--pg-database, default {DEFAULT_PG_DATABASE})",
    )
    parser.add_argument("--pg-database", default=DEFAULT_PG_DATABASE)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument(
        "--profile-dir", default=None, help="cProfile the enroll and dispatch sections into DIR"
    )
    args = parser.parse_args(argv)

    result = run(
        quick=args.quick,
        skip_naive=args.skip_naive,
        database_url=args.database_url,
        pg_database=args.pg_database,
        timeout_s=args.timeout,
        profile_dir=args.profile_dir,
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
