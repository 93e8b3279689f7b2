"""Sending from a large backlog: 100,000 contacts enrolled in a template of 10
touchpoints all due at once (1,000,000 scheduled rows), then the exit of 10
contacts at once (a tag taken off them) and the first batches the dispatcher sends, with everything else still waiting.

Every claim and every write that names its rows must cost the same whatever
the backlog; on SQLite, without statistics, they once read every scheduled
row each (the claim twice: welcomes first, then the rest).

    python -m benchmarks.backlog --json [--contacts N] [--batches N] [--database-url URL]

Reports the exit's milliseconds, the sends per second of the first
``--batches`` claim batches (their CPU too), and checks that exactly the
sent rows were recorded by the mock channel, once each.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from benchmarks.engine_setup import (
    CLOCK_START,
    Databases,
    enroll_all,
    insert_contacts,
    log,
    mock_counts,
    publish,
    setup_channel,
    status_counts,
    timed_drain,
)
from benchmarks.machine import describe
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery, DeliveryStatus
from sopbot.clock import ManualClock
from sopbot.db import session_scope

TOUCHPOINTS = 10
LEAVING = 10


def run(database_url: str | None, contacts: int, batches: int) -> dict[str, Any]:
    machine = describe()
    dbs = Databases(database_url, "sopbot_bench")
    try:
        with dbs.fresh("backlog") as engine:
            clock = ManualClock(CLOCK_START)
            setup_channel(engine)
            touchpoints = [(f"step {i + 1}", "+0m") for i in range(TOUCHPOINTS)]
            template_id = publish(engine, "bench backlog", touchpoints, clock.now())
            log(f"backlog: {contacts} contacts × {TOUCHPOINTS} touchpoints (not timed)")
            ids = insert_contacts(engine, contacts, CLOCK_START)
            enroll_all(engine, template_id, [(c, CLOCK_START) for c in ids], clock.now())
            clock.advance(seconds=1)  # all due
            leaving = ids[len(ids) // 2 : len(ids) // 2 + LEAVING]
            del ids
            with session_scope(engine) as session:
                enrollment_ids = list(
                    session.execute(
                        select(Delivery.enrollment_id)
                        .where(col(Delivery.target_id).in_(leaving))
                        .distinct()
                    ).scalars()
                )
            started = time.perf_counter()
            with session_scope(engine) as session:
                cancelled = transitions.cancel(
                    session, reason="exit", now=clock.now(), enrollment_ids=enrollment_ids
                )
            exit_ms = (time.perf_counter() - started) * 1000

            log(f"backlog: sending {batches} batches out of {contacts * TOUCHPOINTS:,} due")
            _, elapsed, cpu = timed_drain(engine, clock, batches)
            counts = status_counts(engine)
            with session_scope(engine) as session:
                backlog = session.execute(select(func.count()).select_from(Delivery)).scalar_one()
            recorded, distinct = mock_counts(engine)
            sent = counts.get(DeliveryStatus.SENT, 0)
            verified = (
                cancelled == TOUCHPOINTS * LEAVING
                and counts.get(DeliveryStatus.CANCELLED, 0) == cancelled
                and recorded == sent == distinct
                and sum(counts.values()) == backlog
            )
            log(f"backlog: exit {exit_ms:.1f} ms; {sent} sent in {elapsed:.2f}s; {counts}")
    finally:
        dbs.close()
    return {
        "benchmark": "backlog",
        "database": dbs.kind,
        "machine": machine,
        "backlog": backlog,
        "exit_ms": round(exit_ms, 1),
        "exit_cancelled": cancelled,
        "batches": batches,
        "sent": sent,
        "first_sends_per_s": round(sent / elapsed) if elapsed > 0 else None,
        "first_sends_cpu_ms_per_delivery": round(cpu * 1000 / sent, 3) if sent else None,
        "verified": verified,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=20, help="claim batches to send")
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: SQLite)")
    args = parser.parse_args(argv)
    result = run(args.database_url, args.contacts, args.batches)
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
