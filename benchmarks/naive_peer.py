"""Naive-peer benchmark: one APScheduler 3 job per SOP message.

The obvious way to build an SOP scheduler is to turn every touchpoint of every enrolled
member into its own APScheduler job: ``add_job(send, DateTrigger(run_date=due))`` into a
persistent ``SQLAlchemyJobStore`` and let a ``BackgroundScheduler`` fire them. It works for a
demo, but every message costs a pickled job row, a committed INSERT when it is enrolled and a
committed DELETE when it fires, all funnelled through the scheduler's single processing thread
and its job-store lock.

sopbot's own outbox engine is measured against this peer so the engine's figures have a
reference point. This module measures the peer with a zero-latency mock send (the job appends
``(delivery_id, due_ts, fired_ts)`` to an in-process record), so only scheduler overhead is
timed:

* ``enroll_per_s`` -- ``add_job`` calls per second while the scheduler is running (as it would
  be in production) with run dates far in the future, each job persisted to the store;
* ``dispatch_per_s`` -- jobs that are already due, fired per second from ``resume()`` until
  the last one has fired;
* ``burst_p99_late_s`` -- p99 of ``fired - due`` for jobs that all fall due in the same second.

Each phase uses a fresh scheduler and a fresh SQLite file in a temporary directory, which is
removed afterwards.

Run with ``python -m benchmarks.naive_peer --json``; the last line of output is the result as
one JSON object. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

#: Large enough that no job is ever dropped as misfired (one day).
MISFIRE_GRACE_S = 86_400
#: Upper bound on how long a phase waits for its jobs to fire.
DEFAULT_TIMEOUT_S = 300.0
#: Poll interval while waiting for jobs to fire.
POLL_S = 0.02

# Shared in-process "outbox" the mock send writes to: (delivery_id, due_ts, fired_ts).
_RECORD: list[tuple[int, float, float]] = []
_RECORD_LOCK = threading.Lock()


def send(delivery_id: int, due_ts: float) -> None:
    """Zero-latency mock send; module-level so APScheduler pickles it by reference."""
    fired = time.time()
    with _RECORD_LOCK:
        _RECORD.append((delivery_id, due_ts, fired))


def _reset_record() -> None:
    with _RECORD_LOCK:
        _RECORD.clear()


def _record_snapshot() -> list[tuple[int, float, float]]:
    with _RECORD_LOCK:
        return list(_RECORD)


def _record_len() -> int:
    with _RECORD_LOCK:
        return len(_RECORD)


def _log(msg: str) -> None:
    print(f"[naive_peer] {msg}", file=sys.stderr, flush=True)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@contextmanager
def _scheduler(workdir: str, name: str, max_workers: int, paused: bool) -> Iterator[Any]:
    """A started BackgroundScheduler on a fresh SQLite job store; shut down and deleted after."""
    path = os.path.join(workdir, f"{name}.sqlite")
    sched = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
        executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
        job_defaults={
            "coalesce": False,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_S,
        },
        timezone=UTC,
    )
    sched.start(paused=paused)
    try:
        yield sched
    finally:
        # Mock sends are instantaneous, so waiting for in-flight ones costs nothing and keeps
        # the executor threads from outliving the phase.
        sched.shutdown(wait=True)
        for suffix in ("", "-journal", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.remove(path + suffix)


def _add(sched: Any, delivery_id: int, due_ts: float) -> None:
    sched.add_job(
        send,
        trigger=DateTrigger(run_date=_dt(due_ts)),
        args=(delivery_id, due_ts),
        id=f"d{delivery_id}",
    )


def _wait_for(n: int, deadline: float) -> bool:
    """Poll the record until it holds ``n`` sends; False if ``deadline`` passed first."""
    while _record_len() < n:
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _phase_enroll(workdir: str, n: int, max_workers: int) -> dict[str, float]:
    _reset_record()
    far_future = time.time() + 365 * 86_400
    with _scheduler(workdir, "enroll", max_workers, paused=False) as sched:
        t0 = time.perf_counter()
        for i in range(n):
            _add(sched, i, far_future + i)
        elapsed = time.perf_counter() - t0
    return {"enroll_s": elapsed, "enroll_per_s": n / elapsed if elapsed > 0 else math.inf}


def _phase_dispatch(
    workdir: str, n: int, max_workers: int, timeout_s: float
) -> dict[str, float | bool | int]:
    _reset_record()
    with _scheduler(workdir, "dispatch", max_workers, paused=True) as sched:
        due = time.time() - 1.0
        for i in range(n):
            _add(sched, i, due)
        t0 = time.time()
        deadline = time.monotonic() + timeout_s
        sched.resume()
        done = _wait_for(n, deadline)
        record = _record_snapshot()
        if not done:
            sched.pause()
            sched.remove_all_jobs()
    fired = len(record)
    # Rate runs from resume() to the last send (or to now, if nothing fired at all).
    elapsed = (max(r[2] for r in record) if record else time.time()) - t0
    return {
        "dispatch_s": elapsed,
        "dispatch_fired": fired,
        "dispatch_per_s": fired / elapsed if elapsed > 0 else math.inf,
        "dispatch_timed_out": not done,
    }


def _phase_burst(
    workdir: str, n: int, max_workers: int, timeout_s: float, enroll_per_s: float
) -> dict[str, float | bool | int]:
    _reset_record()
    # Leave enough room to persist every job before they fall due (the scheduler is paused
    # while we add, then resumed ahead of the due second so it is idle and waiting for it).
    setup_estimate = n / enroll_per_s if enroll_per_s > 0 else n / 100.0
    due = float(math.ceil(time.time() + 3.0 + 1.5 * setup_estimate))
    with _scheduler(workdir, "burst", max_workers, paused=True) as sched:
        for i in range(n):
            _add(sched, i, due)
        setup_overrun = time.time() > due - 0.5
        sched.resume()
        deadline = time.monotonic() + max(0.0, due - time.time()) + timeout_s
        done = _wait_for(n, deadline)
        record = _record_snapshot()
        if not done:
            sched.pause()
            sched.remove_all_jobs()
    late = [fired - due_ts for _, due_ts, fired in record]
    return {
        "burst_fired": len(record),
        "burst_p50_late_s": _percentile(late, 50),
        "burst_p99_late_s": _percentile(late, 99),
        "burst_max_late_s": max(late) if late else math.nan,
        "burst_timed_out": not done,
        "burst_setup_overrun": setup_overrun,
    }


def run(
    n_enroll: int = 5000,
    n_dispatch: int = 5000,
    n_burst: int = 2000,
    *,
    max_workers: int = 10,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Benchmark the one-job-per-message APScheduler design; see the module docstring."""
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sopbot-naive-peer-") as workdir:
        _log(f"enroll: adding {n_enroll} jobs")
        enroll = _phase_enroll(workdir, n_enroll, max_workers)
        _log(f"enroll: {enroll['enroll_per_s']:.1f} jobs/s in {enroll['enroll_s']:.2f}s")

        _log(f"dispatch: firing {n_dispatch} due jobs")
        dispatch = _phase_dispatch(workdir, n_dispatch, max_workers, timeout_s)
        _log(
            f"dispatch: {dispatch['dispatch_fired']} fired at "
            f"{dispatch['dispatch_per_s']:.1f}/s in {dispatch['dispatch_s']:.2f}s"
            + (" (TIMED OUT)" if dispatch["dispatch_timed_out"] else "")
        )

        _log(f"burst: {n_burst} jobs due in the same second")
        burst = _phase_burst(workdir, n_burst, max_workers, timeout_s, enroll["enroll_per_s"])
        _log(
            f"burst: p50 {burst['burst_p50_late_s']:.3f}s p99 {burst['burst_p99_late_s']:.3f}s "
            f"max {burst['burst_max_late_s']:.3f}s late"
            + (" (TIMED OUT)" if burst["burst_timed_out"] else "")
        )
    _reset_record()

    result: dict[str, Any] = {
        "engine": "naive_apscheduler3",
        "n_enroll": n_enroll,
        "n_dispatch": n_dispatch,
        "n_burst": n_burst,
        "max_workers": max_workers,
        **enroll,
        **dispatch,
        **burst,
        "timed_out": bool(dispatch["dispatch_timed_out"] or burst["burst_timed_out"]),
        "total_s": time.perf_counter() - t_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.naive_peer",
        description="Benchmark the naive one-APScheduler-job-per-message SOP scheduler.",
    )
    parser.add_argument("--n-enroll", type=int, default=5000)
    parser.add_argument("--n-dispatch", type=int, default=5000)
    parser.add_argument("--n-burst", type=int, default=2000)
    parser.add_argument("--max-workers", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)

    result = run(
        args.n_enroll,
        args.n_dispatch,
        args.n_burst,
        max_workers=args.max_workers,
        timeout_s=args.timeout,
    )
    if args.json:
        # NaN/inf (empty or degenerate phases) are not valid JSON; emit null instead.
        clean = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in result.items()
        }
        print(json.dumps(clean), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    # Re-enter through the importable module so the pickled job function reference
    # ("benchmarks.naive_peer:send") and the record it writes to are the ones run() reads.
    from benchmarks.naive_peer import main as _main

    sys.exit(_main())
