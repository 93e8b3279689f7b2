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
import json
import math
import os
import platform
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as dist_version
from typing import Any

import sqlalchemy
from sqlalchemy import select

from benchmarks.engine_setup import (
    CHANNEL,
    CLAIM_BATCH_SIZE,
    CLOCK_START,
    ENROLL_TOUCHPOINTS,
    TICK_SECONDS,
    TIMEZONE,
    Databases,
    Profiler,
    Sizes,
    engine_url,
    enroll_all,
    http_client,
    insert_contacts,
    log,
    mock_counts,
    peak_rss_mb,
    percentile,
    publish,
    rss_now_mb,
    settings,
    setup_channel,
    status_counts,
    timed_drain,
)
from benchmarks.machine import describe
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.runtime import SchedulerRuntime
from sop_templates import service as templates_service
from sopbot.clock import Clock, ManualClock, SystemClock
from sopbot.db import session_scope, wait_for_checkpoints

BURST_WARM_UP = 1_000  # deliveries the worker sends before the burst (not counted)
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_PG_DATABASE = "sopbot_bench"

TARGETS: dict[str, float] = {
    "enroll_per_s": 75_000,
    "dispatch_per_s": 10_000,
    "burst_p99_late_s": 1.0,
    "peak_rss_mb": 300,
    "cron_plan_s": 3.0,
}


# -- phases ---------------------------------------------------------------------------


def phase_enroll(dbs: Databases, sizes: Sizes, profiler: Profiler) -> dict[str, Any]:
    n = sizes.enroll_contacts
    expected = n * sizes.enroll_touchpoints
    with dbs.fresh("enroll") as engine:
        clock = ManualClock(CLOCK_START)
        setup_channel(engine)
        template_id = publish(engine, "bench 10-step SOP", ENROLL_TOUCHPOINTS, clock.now())
        log(f"enroll: inserting {n} contacts (not timed)")
        t0 = time.perf_counter()
        ids = insert_contacts(engine, n, CLOCK_START)
        insert_s = time.perf_counter() - t0
        # Friends added over the last ten minutes; every touchpoint stays in the future.
        targets = [(cid, CLOCK_START - timedelta(seconds=i % 600)) for i, cid in enumerate(ids)]
        rss_before = rss_now_mb()
        log(
            f"enroll: {n} contacts in {insert_s:.2f}s; enrolling into "
            f"{sizes.enroll_touchpoints} touchpoints ({expected} deliveries)"
        )
        with profiler.section("enroll"):
            t0, c0 = time.perf_counter(), time.process_time()
            result = enroll_all(engine, template_id, targets, clock.now())
            enroll_s, enroll_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        peak_rss = peak_rss_mb()
        rss_after = rss_now_mb()
        del targets, ids
        counts = status_counts(engine)
        verified = (
            result.deliveries == expected
            and result.skipped == 0
            and counts.get(DeliveryStatus.SCHEDULED, 0) == expected
            and sum(counts.values()) == expected
        )
        log(
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


def phase_dispatch(dbs: Databases, sizes: Sizes, profiler: Profiler) -> dict[str, Any]:
    n = sizes.dispatch
    with dbs.fresh("dispatch") as engine:
        clock = ManualClock(CLOCK_START)
        setup_channel(engine)
        template_id = publish(engine, "bench welcome", [("welcome", "+0m")], clock.now())
        log(f"dispatch: inserting {n} contacts and enrolling them (not timed)")
        ids = insert_contacts(engine, n, CLOCK_START)
        result = enroll_all(engine, template_id, [(cid, CLOCK_START) for cid in ids], clock.now())
        del ids
        # The setup's (and the enroll phase's) WAL checkpoints run in a thread
        # after their commits: let them finish before the timed drain.
        wait_for_checkpoints()
        clock.advance(seconds=1)  # everything is due now
        log(f"dispatch: draining {result.deliveries} due deliveries")
        stats, dispatch_s, dispatch_cpu_s = timed_drain(
            engine, clock, 10**9, profiler.section("dispatch")
        )
        counts = status_counts(engine)
        recorded, distinct = mock_counts(engine)
        sent = counts.get(DeliveryStatus.SENT, 0)
        verified = sent == n and sum(counts.values()) == n and recorded == n and distinct == n
        log(
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
        setup_channel(engine)
        warm_id = publish(engine, "bench warm-up", [("warm-up", "+0m")], clock.now())
        template_id = publish(engine, "bench burst", [("burst", "+0m")], clock.now())
        ids = insert_contacts(engine, n, clock.now())
        warm = min(BURST_WARM_UP, n)
        enroll_all(engine, warm_id, [(cid, clock.now()) for cid in ids[:warm]], clock.now())
        # About 3 s ahead, on a whole second, with room to write the rows first
        # and for the first tick to send the warm-up.
        rate = enroll_per_s if enroll_per_s and math.isfinite(enroll_per_s) else 5_000.0
        lead = 3.0 + 1.5 * n / rate
        due = datetime.fromtimestamp(math.ceil(time.time() + lead), tz=UTC)
        log(f"burst: {n} deliveries due at {due.isoformat()} (in {lead:.1f}s+)")
        enroll_all(engine, template_id, [(cid, due) for cid in ids], clock.now())
        wait_for_checkpoints()  # the setup's, not the burst's
        del ids
        setup_overrun = clock.now() > due - timedelta(seconds=0.5)
        worker_settings = settings(engine_url(engine))

        async def run() -> tuple[bool, float]:
            http = http_client()
            runtime = SchedulerRuntime(engine, clock, worker_settings, http=http)
            try:
                await runtime.start()
                deadline = time.monotonic() + max(0.0, (due - clock.now()).total_seconds())
                deadline += timeout_s
                while True:
                    counts = await asyncio.to_thread(status_counts, engine)
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
            "burst_p50_late_s": percentile(late, 50),
            "burst_p99_late_s": percentile(late, 99),
            "burst_max_late_s": max(late) if late else math.nan,
            "burst_min_late_s": min(late) if late else math.nan,
            "burst_drained_after_due_s": drained_after,
            "burst_timed_out": not done,
            "burst_setup_overrun": setup_overrun,
            "burst_verified": done and len(late) == n,
        }
        log(
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
        setup_channel(engine)
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
        log(f"cron: enrolling {n} groups (not timed)")
        enroll_all(engine, template_id, [(g, now) for g in range(1, n + 1)], now)  # type: ignore[arg-type]
        started = time.perf_counter()
        cpu = time.process_time()
        with session_scope(engine) as session:
            planned = scheduler_service.plan_cron(
                session, now, lookahead=timedelta(days=1), catch_up=timedelta(days=1)
            )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        counts = status_counts(engine)
    verified = counts == {DeliveryStatus.SCHEDULED: n}
    log(f"cron: one occurrence for {n} groups planned in {elapsed:.2f}s; verified={verified}")
    return {
        "cron_plan_s": elapsed,
        "cron_plan_cpu_s": cpu,
        "cron_planned": getattr(planned, "deliveries", None),
        "cron_verified": verified,
    }


def phase_naive(sizes: Sizes, timeout_s: float) -> dict[str, Any]:
    from benchmarks.naive_peer import run as naive_run

    log(
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
        log(f"database: {dbs.kind} ({dbs.display_url}); quick={quick}")
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
