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

And one slow channel (``--cases slow``): a webhook to a local server that
answers every POST in 2 s, three workers, a 20 s lease, 1,200 deliveries (600
with ``--quick``). It reports the POSTs per delivery key (exactly 1.0 when no
lease is lost while its call is in flight) and the drain time against the
ideal one bound by the requests in flight (``n * 2 s / (3 * 32)``).

Each run: a fresh database at the migrations' head (``sopbot db upgrade``); N
deliveries enrolled through the real service, not yet due; the workers started
and waited for (heartbeats); then every delivery made due in one UPDATE, and
the clock runs until none is pending. Throughput is N / (last ``sent_at`` -
that moment). Every run is checked: each delivery sent exactly once according
to the mock channel's own record.

    python -m benchmarks.scaleout --json            # full size (a few minutes)
    python -m benchmarks.scaleout --quick --json    # smaller, a smoke run
    python -m benchmarks.scaleout --cases slow      # only the slow channel

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON
object. The PostgreSQL server is ``--database-url`` (default the local one);
the benchmark uses its own database ``sopbot_scaleout_bench_<pid>`` (dropped after).

It drives its workers with the harness of the multi-process tests
(``tests/scheduler/scaleout/harness.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from benchmarks.machine import describe, process_cpu
from scheduler.outbox.models import Delivery
from sopbot import migrate
from sopbot.db import make_engine

# The process harness lives with the tests that prove it (tests/pgtools.py,
# tests/scheduler/scaleout/harness.py); the benchmark borrows it.
_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "scheduler" / "scaleout")]
from harness import (  # noqa: E402
    SlowWebhook,
    add_mock_channel,
    add_webhook_channel,
    now,
    pending,
    release,
    seed_parked,
    wait_until,
    witness,
    worker_totals,
    workers,
)
from pgtools import create_database, drop_database_on  # noqa: E402

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# The benchmark's own connections (seeding, polling), left out of the CPU figures.
BENCH_APPLICATION = "sopbot_scaleout_bench"
# Per process: two runs on one machine must not drop each other's database.
BENCH_DATABASE = f"sopbot_scaleout_bench_{os.getpid()}"


def _log(message: str) -> None:
    print(f"[scaleout] {message}", file=sys.stderr, flush=True)


def _own_engine(database_url: str) -> Any:
    if not database_url.startswith("postgresql"):
        return make_engine(database_url)
    url = make_url(database_url).update_query_dict({"application_name": BENCH_APPLICATION})
    return make_engine(url.render_as_string(hide_password=False))


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


def _process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` used so far (Linux;
    0 for a process that is gone)."""
    return sum(process_cpu(pid) for pid in pids)


def _backend_pids(engine: Any) -> list[int]:
    """The database server processes serving this database, but for this
    benchmark's own connections (PostgreSQL on this machine; none for SQLite)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name <> :me AND backend_type = 'client backend'"
                ),
                {"me": BENCH_APPLICATION},
            ).scalars()
        )


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
    engine = _own_engine(database_url)
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
        ) as procs:
            # Workers hold their database connections from start-up (heartbeats);
            # a backend that starts during the drain is missed (counted as 0).
            pids = [p.pid for p in procs]
            backends = _backend_pids(engine)
            process_before = _process_cpu(pids), _process_cpu(backends)
            cpu_before = _cpu_times()
            released_at = release(engine)
            wait_until(lambda: pending(engine) == 0, timeout, interval=0.2, what="drained")
            cpu_after = _cpu_times()
            backends_after = _backend_pids(engine)
            process_after = (
                _process_cpu(pids),
                _process_cpu(backends)
                + _process_cpu([b for b in backends_after if b not in backends]),
            )
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
        worker_cpu = process_after[0] - process_before[0]
        database_cpu = process_after[1] - process_before[1]
        return {
            "deliveries": n,
            "workers": n_workers,
            # CPU of the workers and of the database backends serving them
            # (SQLite: in the workers), per delivery, while draining.
            "cpu_ms_per_delivery": round((worker_cpu + database_cpu) * 1000 / n, 3),
            "worker_cpu_ms_per_delivery": round(worker_cpu * 1000 / n, 3),
            "database_cpu_ms_per_delivery": round(database_cpu * 1000 / n, 3),
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


def run_slow_channel(
    database_url: str,
    n: int,
    n_workers: int,
    workdir: Path,
    *,
    delay_s: float = 2.0,
    lease_s: int = 20,
    concurrency: int = 32,
    timeout: float,
) -> dict[str, Any]:
    """A webhook that answers every POST in ``delay_s`` (a local server),
    ``n_workers`` workers with a ``lease_s`` lease. Each worker keeps
    ``concurrency`` requests in flight (the webhook's ``max_concurrency``), so
    the ideal drain is ``n * delay_s / (n_workers * concurrency)``. Reports the
    POSTs per delivery key (exactly 1.0 when nothing is sent twice) and the drain
    time against that ideal. A run that does not drain within ``timeout`` is
    reported as such, with the POSTs so far."""
    engine = make_engine(database_url)
    receiver = SlowWebhook(delay_s)
    try:
        migrate.upgrade(engine)
        add_webhook_channel(engine, "bench", receiver.url, max_concurrency=concurrency)
        seed_parked(engine, n, "bench")
        drained = True
        with workers(
            database_url, engine, n_workers, workdir, lease_seconds=lease_s, log_level="WARNING"
        ):
            released_at = release(engine)
            try:
                wait_until(lambda: pending(engine) == 0, timeout, interval=0.5, what="drained")
            except TimeoutError:
                drained = False
            seconds = (now() - released_at).total_seconds()
        posts = dict(receiver.posts)
        with engine.connect() as conn:
            counts = dict(
                conn.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
                ).all()
            )
        ideal = n * delay_s / (n_workers * concurrency)
        return {
            "case": "slow_channel",
            "deliveries": n,
            "workers": n_workers,
            "delay_s": delay_s,
            "lease_s": lease_s,
            "concurrency_per_worker": concurrency,
            "drained": drained,
            "seconds": round(seconds, 1),
            "ideal_seconds": round(ideal, 1),
            "vs_ideal": round(seconds / ideal, 2),
            "posts": sum(posts.values()),
            "keys_posted": len(posts),
            "calls_per_key": round(sum(posts.values()) / len(posts), 3) if posts else None,
            "keys_posted_twice_or_more": sum(1 for c in posts.values() if c > 1),
            "statuses": counts,
            "exactly_once": drained
            and counts == {"sent": n}
            and len(posts) == n
            and set(posts.values()) == {1},
        }
    finally:
        receiver.close()
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
    slow: dict[str, Any] | None = None
    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(prefix="sopbot-scaleout-") as tmp:
        workdir = Path(tmp)
        if "slow" in cases:
            n_slow = args.deliveries_slow or (600 if args.quick else 1_200)
            _log(f"postgresql, 3 workers, webhook at 2 s per call, {n_slow} deliveries")
            url = create_database(args.database_url, BENCH_DATABASE)
            slow = run_slow_channel(
                url, n_slow, 3, workdir, timeout=180 if args.quick else args.timeout
            )
            _log(
                f"  {slow['calls_per_key']} calls per key, {slow['seconds']} s "
                f"(ideal {slow['ideal_seconds']} s), exactly once: {slow['exactly_once']}"
            )
        for latency in (20.0, 0.0) if "throughput" in cases else ():
            n = n_latency if latency else n_zero
            for count in counts:
                _log(f"postgresql, {count} worker(s), latency {latency:g} ms, {n} deliveries")
                url = create_database(args.database_url, BENCH_DATABASE)
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
            drop_database_on(args.database_url, BENCH_DATABASE)

    def speedup(latency: float, count: int) -> float | None:
        base = [r for r in results if r["database"] == "postgresql" and r["latency_ms"] == latency]
        one = next((r["per_s"] for r in base if r["workers"] == 1), None)
        many = next((r["per_s"] for r in base if r["workers"] == count), None)
        return round(many / one, 2) if one and many else None

    def one(database: str, latency: float) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in results
                if r["database"] == database and r["latency_ms"] == latency and r["workers"] == 1
            ),
            None,
        )

    # The two PostgreSQL rows: 1 worker at 20 ms against the 800/s that 16
    # calls in flight allow; CPU per delivery at 0 ms relative to SQLite's.
    pg_20, pg_0, lite_0 = one("postgresql", 20.0), one("postgresql", 0.0), one("sqlite", 0.0)
    in_flight = (args.send_concurrency or 8) * (args.pipeline or 2)
    ideal = in_flight * 1000 / 20
    figures = {
        "pg_1_worker_20ms_vs_ideal": round(pg_20["per_s"] / ideal, 3) if pg_20 else None,
        "ideal_20ms_per_s": ideal,
        "pg_cpu_vs_sqlite_0ms": round(
            pg_0["cpu_ms_per_delivery"] / lite_0["cpu_ms_per_delivery"], 2
        )
        if pg_0 and lite_0 and lite_0["cpu_ms_per_delivery"]
        else None,
    }
    return {
        "benchmark": "scaleout",
        "figures": figures,
        "load_avg_end": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "machine": machine,
        "worker_settings": tuning or "defaults",
        "results": results,
        "speedup_20ms": {str(c): speedup(20.0, c) for c in counts if c != 1},
        "speedup_0ms": {str(c): speedup(0.0, c) for c in counts if c != 1},
        "slow_channel": slow,
        "all_exactly_once": all(r["exactly_once"] for r in results)
        and (slow is None or slow["exactly_once"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--database-url", default=DEFAULT_SERVER, help="PostgreSQL server")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--deliveries-latency", type=int, default=None)
    parser.add_argument("--deliveries-zero", type=int, default=None)
    parser.add_argument("--deliveries-slow", type=int, default=None)
    parser.add_argument(
        "--cases",
        default="throughput,slow",
        help="throughput (1, 2, 4 workers; 20 ms and free calls) and/or slow (a 2 s webhook)",
    )
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
        if (slow := result["slow_channel"]) is not None:
            print(
                f"slow channel: {slow['workers']} workers, {slow['delay_s']:g} s per call, "
                f"n={slow['deliveries']}: {slow['calls_per_key']} calls per key, "
                f"{slow['seconds']} s (ideal {slow['ideal_seconds']} s), "
                f"exactly_once={slow['exactly_once']}"
            )
    return 0 if result["all_exactly_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
