"""Scale-out benchmark: dispatch throughput of 1, 2 and 4 real ``sopbot worker``
processes sharing one PostgreSQL, through the mock channel, and of one process
on SQLite for comparison.

Two channel settings per database:

* ``latency_ms=20``: every channel call takes 20 ms and carries one message
  (``max_batch=1``, a per-message API such as a webhook); a worker keeps
  ``SOPBOT_SEND_CONCURRENCY`` (8) calls in flight. This is the case scale-out
  is for: more workers, more calls in flight.
* ``latency_ms=0``: calls are free and carry up to 1,000 messages: the database
  (claim, mark sending, record, and the mock's own insert) is the ceiling.

Each run: a fresh database at the migrations' head (``sopbot db upgrade``); N
deliveries enrolled through the real service, not yet due; the workers started
and waited for (heartbeats); then every delivery made due in one UPDATE, and
the clock runs until none is pending. Throughput is N / (last ``sent_at`` -
that moment). Every run is checked: each delivery sent exactly once according
to the mock channel's own record.

    python -m benchmarks.scaleout --json            # full size (a few minutes)
    python -m benchmarks.scaleout --quick --json    # smaller, a smoke run

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON
object. The PostgreSQL server is ``--database-url`` (default the local one);
the benchmark uses its own database ``sopbot_scaleout_bench_<pid>`` (dropped after).

The same helpers drive the multi-process tests in ``tests/scheduler/scaleout``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import sqlalchemy
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Engine, make_url

from audiences.models import Account, Contact
from benchmarks.machine import describe
from channels.models import MockMessage
from channels.registry import ensure_instance
from scheduler.operations.models import Worker
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus
from sop_templates import service as templates_service
from sopbot import migrate
from sopbot.db import make_engine, session_scope

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Per process: two runs on one machine must not drop each other's database.
BENCH_DATABASE = f"sopbot_scaleout_bench_{os.getpid()}"
CONTACT_CHUNK = 10_000
ENROLL_CHUNK = 10_000
# Not due until released: far enough ahead that no worker touches them early.
PARKED = timedelta(days=1)


def _log(message: str) -> None:
    print(f"[scaleout] {message}", file=sys.stderr, flush=True)


def now() -> datetime:
    return datetime.now(UTC)


# -- databases ------------------------------------------------------------------------------


def fresh_postgres(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on ``server_url``'s server; return its URL."""
    base = make_url(server_url).set(drivername="postgresql+psycopg")
    admin = sqlalchemy.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def cli_env(database_url: str, **settings: Any) -> dict[str, str]:
    """Environment for a ``sopbot`` subprocess: ``SOPBOT_*`` from ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPBOT_")}
    env["SOPBOT_DATABASE_URL"] = database_url
    for key, value in settings.items():
        env[f"SOPBOT_{key.upper()}"] = str(value)
    return env


def sopbot_command(*args: str) -> list[str]:
    """``sopbot ARGS`` run by this interpreter (the console script's own code)."""
    return [sys.executable, "-m", "api.cli", *args]


def db_upgrade(database_url: str, cwd: Path) -> None:
    """``sopbot db upgrade`` as an operator runs it."""
    subprocess.run(
        sopbot_command("db", "upgrade"),
        env=cli_env(database_url),
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=120,
    )


# -- data ------------------------------------------------------------------------------------


def add_mock_channel(engine: Engine, name: str, **config: Any) -> None:
    with session_scope(engine) as session:
        ensure_instance(session, name, "mock", config)


def seed_parked(engine: Engine, n: int, channel: str, *, prefix: str = "wm_scale") -> int:
    """Enroll ``n`` contacts into a one-touchpoint (``+0m``) template on
    ``channel`` through the real service; their deliveries are not due for a
    day (``release`` makes them due). Returns the template id."""
    anchor = now() + PARKED
    with session_scope(engine) as session:
        ensure_instance(session, "mock", "mock")
        spec = {
            "name": f"scale-out {prefix}",
            "target": "contact",
            "timezone": "Asia/Shanghai",
            "anchor": "join",
            "channel": channel,
            "touchpoints": [
                {"name": "hello", "timing": "+0m", "content": ["{{ contact.name }}，你好"]}
            ],
        }
        template = templates_service.create_template(session, spec, now())
        templates_service.freeze_draft(session, template.id, now())  # type: ignore[arg-type]
        template_id = template.id
    with engine.begin() as conn:
        account_id = conn.execute(
            insert(Account).values(external_id=f"{prefix}_staff", name="客服", channel=channel)
        ).inserted_primary_key[0]
    contacts = Contact.__table__  # type: ignore[attr-defined]
    for start in range(0, n, CONTACT_CHUNK):
        with engine.begin() as conn:
            conn.execute(
                insert(contacts),
                [
                    {
                        "external_id": f"{prefix}_{i:07d}",
                        "account_id": account_id,
                        "name": f"客户{i}",
                        "joined_at": anchor,
                        "status": "active",
                        "timezone": None,
                        "attributes": {},
                    }
                    for i in range(start, min(n, start + CONTACT_CHUNK))
                ],
            )
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                select(contacts.c.id)
                .where(contacts.c.external_id.like(f"{prefix}\\_%", escape="\\"))
                .order_by(contacts.c.id)
            ).scalars()
        )
    for start in range(0, len(ids), ENROLL_CHUNK):
        with session_scope(engine) as session:
            template = templates_service.get_template(session, template_id)  # type: ignore[arg-type]
            scheduler_service.enroll(
                session, template, [(i, anchor) for i in ids[start : start + ENROLL_CHUNK]], now()
            )
    return template_id  # type: ignore[return-value]


def release(engine: Engine) -> datetime:
    """Make every parked delivery due now (due_at too, so lateness is measured
    from here); returns that instant."""
    at = now()
    with engine.begin() as conn:
        conn.execute(
            update(Delivery)
            .where(Delivery.status == DeliveryStatus.SCHEDULED)  # type: ignore[arg-type]
            .values(due_at=at, run_at=at)
        )
    return at


@dataclass
class Witness:
    """What the database and the mock channel's record say after a run."""

    statuses: dict[str, int]
    mock_messages: int
    mock_distinct: int
    duplicates: int  # deliveries the mock received more than once
    sent_without_record: int  # status sent, but the mock never got it
    recorded_not_sent: int  # the mock got it, but the status is not sent

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def pending(self) -> int:
        return sum(self.statuses.get(s, 0) for s in DeliveryStatus.PENDING)


def witness(engine: Engine) -> Witness:
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )
        total, distinct = conn.execute(
            select(func.count(), func.count(MockMessage.delivery_id.distinct()))  # type: ignore[attr-defined]
        ).one()
        sent_ids = select(Delivery.id).where(Delivery.status == DeliveryStatus.SENT)  # type: ignore[arg-type]
        recorded = select(MockMessage.delivery_id)
        sent_without = conn.execute(
            select(func.count()).select_from(sent_ids.except_(recorded).subquery())
        ).scalar_one()
        recorded_not_sent = conn.execute(
            select(func.count()).select_from(recorded.except_(sent_ids).subquery())
        ).scalar_one()
    return Witness(
        statuses=statuses,
        mock_messages=int(total),
        mock_distinct=int(distinct),
        duplicates=int(total) - int(distinct),
        sent_without_record=int(sent_without),
        recorded_not_sent=int(recorded_not_sent),
    )


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    Delivery.status.in_(DeliveryStatus.PENDING)  # type: ignore[attr-defined]
                )
            ).scalar_one()
        )


def live_workers(engine: Engine, stale_s: float = 30.0) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Worker.id, Worker.claimed_total, Worker.sent_total).where(  # type: ignore[call-overload]
                Worker.stopped_at.is_(None),  # type: ignore[union-attr]
                Worker.last_seen_at >= now() - timedelta(seconds=stale_s),
            )
        ).all()
    return {r.id: {"claimed": r.claimed_total, "sent": r.sent_total} for r in rows}


def worker_totals(engine: Engine) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Worker.id, Worker.claimed_total, Worker.sent_total)).all()  # type: ignore[call-overload]
    return {r.id: {"claimed": r.claimed_total, "sent": r.sent_total} for r in rows}


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not {what or predicate} within {timeout:.0f} s")
        time.sleep(interval)


# -- worker processes --------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the graceful exit; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_worker(
    database_url: str, worker_id: str, workdir: Path, **settings: Any
) -> WorkerProcess:
    """``sopbot worker`` in its own process. ``settings`` become ``SOPBOT_*``
    variables (defaults: tick 0.1 s, heartbeat 0.5 s). Its backends carry
    ``application_name = worker_id`` (PGAPPNAME)."""
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "tick_seconds": 0.1,
        "heartbeat_seconds": 0.5,
        "worker_stale_seconds": 10,
        "plan_interval_seconds": 3600,
        "task_poll_seconds": 3600,
        "log_format": "json",
    }
    values.update(settings)
    env = cli_env(database_url, **values)
    env["PGAPPNAME"] = worker_id
    log_path = workdir / f"{worker_id.replace(':', '_')}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        sopbot_command("worker"),
        env=env,
        cwd=workdir,  # no stray .env file from the repository
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return WorkerProcess(worker_id, process, log_path, log_file)


@contextlib.contextmanager
def workers(
    database_url: str, engine: Engine, count: int, workdir: Path, prefix: str = "w", **settings: Any
) -> Iterator[list[WorkerProcess]]:
    """``count`` workers, returned once each has sent its first heartbeat;
    stopped with SIGTERM (then killed, if need be) on the way out."""
    procs = [
        start_worker(database_url, f"{prefix}{i + 1}", workdir, **settings) for i in range(count)
    ]
    try:
        ids = {p.worker_id for p in procs}

        def all_live() -> bool:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"worker {p.worker_id} exited:\n{p.output()[-3000:]}")
            return ids <= live_workers(engine).keys()

        wait_until(all_live, 60, what="every worker live")
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate(timeout=30)
            p.close()


# -- the benchmark ----------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def run_case(
    database_url: str,
    n: int,
    n_workers: int,
    latency_ms: float,
    workdir: Path,
    *,
    timeout: float,
    worker_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        per_message = latency_ms > 0
        add_mock_channel(
            engine,
            "bench",
            latency_ms=latency_ms,
            max_batch=1 if per_message else 1000,
            persist=True,
        )
        t = time.monotonic()
        seed_parked(engine, n, "bench")
        _log(f"  seeded {n} deliveries in {time.monotonic() - t:.1f} s")
        with workers(
            database_url,
            engine,
            n_workers,
            workdir,
            # Small batches when calls are slow, so the work spreads over the workers.
            claim_batch_size=100 if per_message else 500,
            log_format="text",
            log_level="WARNING",
            **(worker_settings or {}),
        ):
            cpu_before = _cpu_times()
            released_at = release(engine)
            wait_until(lambda: pending(engine) == 0, timeout, interval=0.2, what="drained")
            cpu_after = _cpu_times()
        totals = worker_totals(engine)  # after the graceful stop's last heartbeat
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))
            ).one()
        check = witness(engine)
        seconds = (last - released_at).total_seconds()
        ok = (
            check.statuses.get("sent") == n
            and check.duplicates == 0
            and check.mock_distinct == n
            and check.sent_without_record == 0
        )
        return {
            "deliveries": n,
            "workers": n_workers,
            "latency_ms": latency_ms,
            "max_batch": 1 if per_message else 1000,
            "seconds": round(seconds, 3),
            "per_s": round(n / seconds, 1) if seconds > 0 else None,
            "first_send_after_s": round((first - released_at).total_seconds(), 3),
            "exactly_once": ok,
            "heartbeat_counts_match": sum(t["sent"] for t in totals.values()) == n,
            "sent_by_worker": {k: v["sent"] for k, v in sorted(totals.items())},
            # How busy the whole machine's CPUs were while draining (workers,
            # database, everything): near 1.0 means more workers cannot help here.
            "machine_cpu_busy": (
                round((cpu_after[0] - cpu_before[0]) / (cpu_after[1] - cpu_before[1]), 2)
                if cpu_before and cpu_after and cpu_after[1] > cpu_before[1]
                else None
            ),
        }
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = describe()
    n_latency = args.deliveries_latency or (2_000 if args.quick else 10_000)
    n_zero = args.deliveries_zero or (5_000 if args.quick else 30_000)
    counts = [int(c) for c in args.workers.split(",")]
    tuning: dict[str, Any] = {}
    if args.send_concurrency:
        tuning["send_concurrency"] = args.send_concurrency
    if args.pipeline:
        tuning["dispatch_pipeline"] = args.pipeline
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sopbot-scaleout-") as tmp:
        workdir = Path(tmp)
        for latency in (20.0, 0.0):
            n = n_latency if latency else n_zero
            for count in counts:
                _log(f"postgresql, {count} worker(s), latency {latency:g} ms, {n} deliveries")
                url = fresh_postgres(args.database_url, BENCH_DATABASE)
                result = run_case(
                    url, n, count, latency, workdir, timeout=args.timeout, worker_settings=tuning
                )
                result["database"] = "postgresql"
                results.append(result)
                _log(
                    f"  {result['per_s']}/s ({result['seconds']} s), exactly once: {result['exactly_once']}"
                )
            _log(f"sqlite, 1 worker, latency {latency:g} ms, {n} deliveries")
            path = workdir / f"bench-{int(latency)}.db"
            result = run_case(
                f"sqlite:///{path}",
                n,
                1,
                latency,
                workdir,
                timeout=args.timeout,
                worker_settings=tuning,
            )
            result["database"] = "sqlite"
            results.append(result)
            _log(
                f"  {result['per_s']}/s ({result['seconds']} s), exactly once: {result['exactly_once']}"
            )
        with contextlib.suppress(Exception):
            admin = sqlalchemy.create_engine(
                make_url(args.database_url).set(
                    drivername="postgresql+psycopg", database="postgres"
                ),
                isolation_level="AUTOCOMMIT",
            )
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}"'))
            admin.dispose()

    def speedup(latency: float, count: int) -> float | None:
        base = [r for r in results if r["database"] == "postgresql" and r["latency_ms"] == latency]
        one = next((r["per_s"] for r in base if r["workers"] == 1), None)
        many = next((r["per_s"] for r in base if r["workers"] == count), None)
        return round(many / one, 2) if one and many else None

    return {
        "benchmark": "scaleout",
        "quick": args.quick,
        "machine": machine,
        "worker_settings": tuning or "defaults",
        "results": results,
        "speedup_20ms": {str(c): speedup(20.0, c) for c in counts if c != 1},
        "speedup_0ms": {str(c): speedup(0.0, c) for c in counts if c != 1},
        "all_exactly_once": all(r["exactly_once"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--database-url", default=DEFAULT_SERVER, help="PostgreSQL server")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--deliveries-latency", type=int, default=None)
    parser.add_argument("--deliveries-zero", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--send-concurrency", type=int, default=None, help="SOPBOT_SEND_CONCURRENCY of the workers"
    )
    parser.add_argument(
        "--pipeline", type=int, default=None, help="SOPBOT_DISPATCH_PIPELINE of the workers"
    )
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for r in result["results"]:
            print(
                f"{r['database']:<10} workers={r['workers']} latency={r['latency_ms']:>4g} ms "
                f"n={r['deliveries']:>6} {r['per_s']:>9}/s exactly_once={r['exactly_once']}"
            )
    return 0 if result["all_exactly_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
