"""Recording a batch's outcomes on PostgreSQL, two ways: the one ``UPDATE ...
FROM unnest(...)`` for the batch that ``transitions.record_outcome`` runs,
against the ``executemany`` of one ``UPDATE ... WHERE id = ?`` per outcome it
ran before (psycopg 3 pipelines it; kept here only to be measured), alternated
on the same rows. The rows are made ``sending`` again before each round, as a
worker holding them would have them. With ``--stale-statistics`` the table is
analyzed first while every row is ``scheduled`` (the statistics then show none
in flight, which misled an earlier form of the single statement).

Reports, per outcome: wall time, this process's CPU and the database
backend's CPU (read from ``/proc``: the server must run on this machine).

    python -m benchmarks.outcome_writes --json [--database-url URL] [--outcomes N] [--batch N]

The database is ``sopbot_outcome_writes_bench_<pid>`` on that server, dropped after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select, update

from benchmarks.machine import describe, process_cpu
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery
from scheduler.outbox.repository import DELIVERIES, execute_many
from scheduler.outbox.transitions import Outcome
from sopbot import migrate
from sopbot.db import make_engine, session_scope

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "scheduler" / "scaleout")]
from harness import add_mock_channel, now, seed_parked  # noqa: E402
from pgtools import create_database, drop_database_on  # noqa: E402

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DATABASE = f"sopbot_outcome_writes_bench_{os.getpid()}"
OWNER = "bench-worker"


def _each_row(session: Any, outcomes: dict[int, Outcome], at: Any) -> int:
    """The batch's outcomes (all sent) as one ``UPDATE ... WHERE id = ?`` per
    outcome, an ``executemany``, fenced like ``record_outcome`` (lease owner,
    ``sending``): the form ``record_outcome`` ran before."""
    table = DELIVERIES
    stmt = (
        table.update()
        .where(
            table.c.id == bindparam("b_id"),
            table.c.lease_owner == OWNER,
            table.c.status == "sending",
        )
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            provider_message_id=bindparam("b_provider"),
            sent_at=bindparam("b_sent_at", type_=table.c.sent_at.type),
            finished_at=bindparam("b_finished_at", type_=table.c.finished_at.type),
            rendered=bindparam("b_rendered", type_=table.c.rendered.type),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    rows = [
        {
            "b_id": i,
            "b_status": o.status,
            "b_reason": o.reason,
            "b_provider": o.provider_message_id,
            "b_sent_at": at,
            "b_finished_at": at,
            "b_rendered": o.rendered,
        }
        for i, o in outcomes.items()
    ]
    return execute_many(session.connection(), stmt, rows)


def _round(engine: Any, ids: list[int], batch: int, each_row: bool) -> dict[str, float]:
    with engine.begin() as conn:  # the rows in flight again, held by OWNER
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))  # type: ignore[union-attr]
            .values(status="sending", lease_owner=OWNER, sent_at=None, finished_at=None)
        )
    at = now()
    wall, client, server, written = 0.0, 0.0, 0.0, 0
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        outcomes = {
            i: Outcome("sent", None, f"p{i}", sent=True, rendered=[{"text": "你好"}]) for i in chunk
        }
        with session_scope(engine) as session:
            pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            s0, t0, c0 = process_cpu(pid), time.perf_counter(), time.process_time()
            if each_row:
                written += _each_row(session, outcomes, at)
            else:
                written += transitions.record_outcome(
                    session, owner=OWNER, outcomes=outcomes, now=at
                )
            session.commit()
            wall += time.perf_counter() - t0
            client += time.process_time() - c0
            server += process_cpu(pid) - s0
    if written != len(ids):
        raise RuntimeError(f"{written} of {len(ids)} outcomes written")
    n = len(ids)
    return {
        "wall_ms": round(wall * 1000 / n, 4),
        "client_cpu_ms": round(client * 1000 / n, 4),
        "server_cpu_ms": round(server * 1000 / n, 4),
    }


def run(
    server: str, outcomes: int, batch: int, rounds: int = 3, stale_statistics: bool = False
) -> dict[str, Any]:
    machine = describe()
    url = create_database(server, BENCH_DATABASE)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        add_mock_channel(engine, "bench")
        seed_parked(engine, outcomes, "bench")
        if stale_statistics:  # every row scheduled when analyzed: none in flight
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE deliveries")
        with engine.connect() as conn:
            ids = list(conn.execute(select(Delivery.id).order_by(Delivery.id)).scalars())  # type: ignore[call-overload]
        results: dict[str, list[dict[str, float]]] = {"one_statement": [], "executemany": []}
        for _ in range(rounds):  # alternated, so load changes hit both alike
            results["executemany"].append(_round(engine, ids, batch, each_row=True))
            results["one_statement"].append(_round(engine, ids, batch, each_row=False))
    finally:
        engine.dispose()
        drop_database_on(server, BENCH_DATABASE)
    best = {way: min(r, key=lambda x: x["wall_ms"]) for way, r in results.items()}
    return {
        "benchmark": "outcome_writes",
        "machine": machine,
        "outcomes": outcomes,
        "batch": batch,
        "stale_statistics": stale_statistics,
        "rounds": results,
        "best": best,
        "load_avg_end": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--database-url", default=DEFAULT_SERVER, help="PostgreSQL server")
    parser.add_argument("--outcomes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--stale-statistics",
        action="store_true",
        help="analyze the table while every row is scheduled (statistics show none in flight)",
    )
    args = parser.parse_args(argv)
    result = run(
        args.database_url, args.outcomes, args.batch, stale_statistics=args.stale_statistics
    )
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
