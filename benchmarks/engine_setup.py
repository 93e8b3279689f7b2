"""Engine benchmark fixtures: what every phase of ``benchmarks.engine`` stands on.

The sizes of a full or a quick run, a fresh database per phase (a temporary SQLite
file, or a dedicated PostgreSQL database), the worker's settings, the mock channel,
a published SOP, bulk-inserted contacts and their enrollment, the status and mock
counts a phase verifies, RSS and percentile readings, and the optional cProfile
around the timed sections. ``benchmarks.log`` stands on the database, RSS and
percentile helpers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import math
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel

from audiences.models import Account, Contact
from channels.models import MockMessage
from channels.registry import ensure_instance
from scheduler.outbox import service as scheduler_service
from scheduler.runtime import SchedulerRuntime
from sop_templates import service as templates_service
from sopbot.clock import Clock
from sopbot.db import create_all, import_models, make_engine, reader, session_scope
from sopbot.settings import Settings

#: Every ManualClock phase starts here (08:00 in Asia/Shanghai, the template zone).
CLOCK_START = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
TIMEZONE = "Asia/Shanghai"
CHANNEL = "mock"
WORKER_ID = "bench-worker"
CLAIM_BATCH_SIZE = 1000
TICK_SECONDS = 1.0
ENROLL_CHUNK = 10_000
CONTACT_INSERT_CHUNK = 10_000

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


def log(msg: str) -> None:
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
            self._pg_url = ensure_pg_database(database_url, pg_database)
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


def ensure_pg_database(url: str, name: str) -> str:
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
                log(f"creating PostgreSQL database {name!r}")
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


# -- fixtures shared by the phases ----------------------------------------------------


def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        worker_id=WORKER_ID,
        claim_batch_size=CLAIM_BATCH_SIZE,
        tick_seconds=TICK_SECONDS,
        _env_file=None,  # type: ignore[call-arg]
    )


def engine_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def setup_channel(engine: Engine) -> None:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "mock", {"persist": True, "latency_ms": 0})


def publish(engine: Engine, name: str, touchpoints: list[tuple[str, str]], now: datetime) -> int:
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


def insert_contacts(engine: Engine, n: int, joined_at: datetime) -> list[int]:
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


def enroll_all(
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


def status_counts(engine: Engine) -> dict[str, int]:
    # A reader: polling progress must not queue for the write lock the
    # dispatcher being measured takes for every claim and outcome.
    with Session(reader(engine)) as session:
        return scheduler_service.delivery_counts(session)


def mock_counts(engine: Engine) -> tuple[int, int]:
    """(mock messages recorded, distinct deliveries among them)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.count(MockMessage.delivery_id.distinct()))  # type: ignore[attr-defined]
        ).one()
    return int(row[0]), int(row[1])


def timed_drain(
    engine: Engine,
    clock: Clock,
    max_batches: int,
    section: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[Any, float, float]:
    """Send what is due with a dispatcher of this process, up to ``max_batches``
    claim batches: its stats, and the seconds and this process's CPU seconds
    of the sending alone (inside ``section``, a profiler's), the channel
    adapter built before."""

    async def run() -> tuple[Any, float, float]:
        http = http_client()
        try:
            runtime = SchedulerRuntime(engine, clock, settings(engine_url(engine)), http=http)
            runtime.channels.get(CHANNEL)
            with section or contextlib.nullcontext():
                t0, c0 = time.perf_counter(), time.process_time()
                stats = await runtime.dispatcher.run_once(max_batches=max_batches)
                return stats, time.perf_counter() - t0, time.process_time() - c0
        finally:
            await http.aclose()

    return asyncio.run(run())


def http_client() -> httpx.AsyncClient:
    # The mock channel never calls out; anything that does gets a 599, not the network.
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(599)))


def rss_now_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], pct: float) -> float:
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
            log(f"profile {name} by {sort} ({path}):\n{out.getvalue()}")


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
