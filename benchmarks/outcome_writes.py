"""Recording a batch's outcomes on PostgreSQL, two ways: the ``executemany`` of
one ``UPDATE ... WHERE id = ?`` per outcome that ``transitions.record_outcome``
runs (psycopg 3 pipelines it), against one ``UPDATE ... FROM unnest(...)`` of
one array per column for the whole batch (a form tried, kept here only to be
measured), alternated on the same rows. The rows are made ``sending`` again
before each round, as a worker holding them would have them.

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

from sqlalchemy import select, update

from benchmarks.machine import describe
from scheduler.outbox import transitions
from scheduler.outbox.models import Delivery
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


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_COLUMNS = (
    ("b_id", "bigint"),
    ("b_status", "varchar"),
    ("b_reason", "varchar"),
    ("b_provider", "varchar"),
    ("b_sent_at", "timestamptz"),
    ("b_finished_at", "timestamptz"),
    ("b_rendered", "text"),
)


def _one_statement(session: Any, outcomes: dict[int, Outcome], at: Any) -> int:
    """The batch's outcomes (all sent) as one ``UPDATE ... FROM unnest(...)``,
    fenced like ``record_outcome`` (lease owner, ``sending``)."""
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in _COLUMNS)
    names = ", ".join(column for column, _ in _COLUMNS)
    sql = f"""
        UPDATE deliveries AS d SET
            status = v.b_status, reason = v.b_reason, provider_message_id = v.b_provider,
            sent_at = v.b_sent_at, finished_at = v.b_finished_at,
            rendered = v.b_rendered::json, lease_owner = NULL, lease_expires_at = NULL
        FROM unnest({arrays}) AS v({names})
        WHERE d.id = v.b_id AND d.lease_owner = %s AND d.status = 'sending'
    """
    ids = list(outcomes)
    columns = (
        ids,
        [o.status for o in outcomes.values()],
        [o.reason for o in outcomes.values()],
        [o.provider_message_id for o in outcomes.values()],
        [at] * len(ids),
        [at] * len(ids),
        [json.dumps(o.rendered) for o in outcomes.values()],
    )
    return int(session.connection().exec_driver_sql(sql, (*columns, OWNER)).rowcount)


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
            s0, t0, c0 = _cpu(pid), time.perf_counter(), time.process_time()
            if each_row:
                written += transitions.record_outcome(
                    session, owner=OWNER, outcomes=outcomes, now=at
                )
            else:
                written += _one_statement(session, outcomes, at)
            session.commit()
            wall += time.perf_counter() - t0
            client += time.process_time() - c0
            server += _cpu(pid) - s0
    if written != len(ids):
        raise RuntimeError(f"{written} of {len(ids)} outcomes written")
    n = len(ids)
    return {
        "wall_ms": round(wall * 1000 / n, 4),
        "client_cpu_ms": round(client * 1000 / n, 4),
        "server_cpu_ms": round(server * 1000 / n, 4),
    }


def run(server: str, outcomes: int, batch: int, rounds: int = 3) -> dict[str, Any]:
    machine = describe()
    url = create_database(server, BENCH_DATABASE)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        add_mock_channel(engine, "bench")
        seed_parked(engine, outcomes, "bench")
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
    args = parser.parse_args(argv)
    result = run(args.database_url, args.outcomes, args.batch)
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
