"""What PostgreSQL's backend spends per delivery on the outbox's row writes,
for the three updates sopbot makes today and for two other ways of marking a
row claimed and ``sending``, on a copy of the ``deliveries`` table (the same
columns and indexes) in a database of its own:

* ``current``: claim (``scheduled`` → ``claimed``), the ``sending`` mark and
  the outcome, each an ``UPDATE`` that changes ``status`` (an indexed column:
  no HOT update, an entry added to every index), each committed;
* ``hot``: the claim and the ``sending`` mark change only a column no index
  names (``phase``), on pages with room (``fillfactor`` 70), so both can be HOT
  updates; the claim reads a partial index of scheduled rows;
* ``lock``: the claim is a row lock held in the transaction that marks the
  rows ``sending`` (no ``claimed`` write at all).

Each batch is claimed, marked and recorded in turn by one connection, as one
worker with a free channel would; the backend's CPU is read from ``/proc``
(the server must run on this machine). Only ``current`` is what sopbot runs;
the others are measured to know what a change of the state representation
would buy (README, "Not met").

    python -m benchmarks.pg_row_writes --json [--database-url URL] [--rows N] [--batch N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.machine import describe, process_cpu

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS)]
from pgtools import create_database, drop_database_on  # noqa: E402

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = f"sopbot_row_writes_bench_{os.getpid()}"
VARIANTS = ("current", "hot", "lock")
RENDERED = json.dumps([{"type": "text", "text": "您好，您的优惠券已到账，点击领取 " * 2}])

COLUMNS = """
    id bigserial PRIMARY KEY, enrollment_id integer NOT NULL, touchpoint_id integer NOT NULL,
    occurrence bigint NOT NULL DEFAULT 0, template_id integer NOT NULL, version_id integer NOT NULL,
    target_kind varchar(16) NOT NULL, target_id integer NOT NULL, channel varchar(100) NOT NULL,
    mode varchar(16) NOT NULL, due_at timestamptz NOT NULL, run_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL, status varchar(16) NOT NULL, reason varchar(500),
    attempts integer NOT NULL DEFAULT 0, lease_owner varchar(200), lease_expires_at timestamptz,
    created_at timestamptz NOT NULL, sent_at timestamptz, finished_at timestamptz,
    provider_message_id varchar(200), rendered json, variant varchar(40), phase varchar(16)
"""
# sopbot's indexes on deliveries (scheduler/outbox/models.py), but for the claim's.
INDEXES = """
    CREATE UNIQUE INDEX ON dx (enrollment_id, touchpoint_id, occurrence);
    CREATE INDEX ON dx (touchpoint_id, occurrence, run_at)
        WHERE status = 'scheduled' AND mode IN ('task', 'moment');
    CREATE INDEX ON dx (run_at) WHERE status = 'scheduled' AND mode = 'welcome';
    CREATE INDEX ON dx (template_id, status);
    CREATE INDEX ON dx (target_kind, target_id, sent_at) WHERE sent_at IS NOT NULL;
    CREATE INDEX ON dx (due_at, id);
    CREATE INDEX ON dx (template_id, due_at, id);
    CREATE INDEX ON dx (sent_at, id) WHERE sent_at IS NOT NULL;
"""
CLAIM_INDEX = {
    "current": "CREATE INDEX ON dx (status, run_at)",
    "lock": "CREATE INDEX ON dx (status, run_at)",
    "hot": "CREATE INDEX ON dx (run_at) WHERE status = 'scheduled'; "
    "CREATE INDEX ON dx (status, run_at)",
}


def _setup(conn: psycopg.Connection[Any], variant: str, rows: int) -> None:
    room = " WITH (fillfactor = 70)" if variant == "hot" else ""
    conn.execute("DROP TABLE IF EXISTS dx")
    conn.execute(f"CREATE TABLE dx ({COLUMNS}){room}")
    for statement in (INDEXES + ";" + CLAIM_INDEX[variant]).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        """
        INSERT INTO dx (enrollment_id, touchpoint_id, template_id, version_id, target_kind,
                        target_id, channel, mode, due_at, run_at, expires_at, status, created_at)
        SELECT g, 1, 1, 1, 'contact', g, 'mock', 'send', now() - interval '1 minute',
               now() - interval '1 minute' + g * interval '1 millisecond',
               now() + interval '1 day', 'scheduled', now()
        FROM generate_series(1, %s) AS g
        """,
        (rows,),
    )
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE dx")
    conn.autocommit = False


def _claim(conn: psycopg.Connection[Any], variant: str, batch: int) -> list[int]:
    if variant == "lock":
        found = conn.execute(
            """
            SELECT id FROM dx WHERE status = 'scheduled' AND run_at <= now()
            ORDER BY run_at LIMIT %s FOR UPDATE SKIP LOCKED
            """,
            (batch,),
        ).fetchall()
        return [r[0] for r in found]  # held until the sending mark commits
    if variant == "hot":
        mark, still = "phase = 'claimed'", "status = 'scheduled' AND phase IS NULL"
    else:
        mark, still = "status = 'claimed'", "status = 'scheduled'"
    found = conn.execute(
        f"""
        WITH due AS MATERIALIZED (
            SELECT id FROM dx WHERE {still} AND run_at <= now()
            ORDER BY run_at LIMIT %s FOR UPDATE SKIP LOCKED)
        UPDATE dx SET {mark}, lease_owner = 'w1', lease_expires_at = now() + interval '1 minute'
        WHERE id = ANY(ARRAY(SELECT id FROM due)) RETURNING id
        """,
        (batch,),
    ).fetchall()
    conn.commit()
    return [r[0] for r in found]


def _mark_sending(conn: psycopg.Connection[Any], variant: str, ids: list[int]) -> None:
    if variant == "hot":
        mark, fence = "phase = 'sending'", "phase = 'claimed'"
    elif variant == "lock":
        mark, fence = "status = 'sending', lease_owner = 'w1'", "status = 'scheduled'"
    else:
        mark, fence = "status = 'sending'", "status = 'claimed'"
    conn.execute(
        f"""
        UPDATE dx SET {mark}, attempts = attempts + 1,
               lease_expires_at = now() + interval '1 minute'
        WHERE id = ANY(%s) AND {fence}
        """,
        (ids,),
    )
    conn.commit()


def _record(conn: psycopg.Connection[Any], variant: str, ids: list[int]) -> None:
    fence = "dx.phase = 'sending'" if variant == "hot" else "dx.status = 'sending'"
    clear = ", phase = NULL" if variant == "hot" else ""
    conn.execute(
        f"""
        UPDATE dx SET status = 'sent', sent_at = now(), finished_at = now(),
               lease_owner = NULL, lease_expires_at = NULL, provider_message_id = v.provider,
               rendered = v.rendered::json {clear}
        FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS provider,
                     unnest(%s::text[]) AS rendered) AS v
        WHERE dx.id = v.id AND dx.lease_owner = 'w1' AND {fence}
        """,
        (ids, [f"m-{i}" for i in ids], [RENDERED] * len(ids)),
    )
    conn.commit()


def measure(url: str, variant: str, rows: int, batch: int) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        _setup(conn, variant, rows)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        cpu0, wall0 = process_cpu(pid), time.perf_counter()
        done = 0
        while ids := _claim(conn, variant, batch):
            _mark_sending(conn, variant, ids)
            _record(conn, variant, ids)
            done += len(ids)
        cpu, wall = process_cpu(pid) - cpu0, time.perf_counter() - wall0
        sent = conn.execute("SELECT count(*) FROM dx WHERE status = 'sent'").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE dx")
        conn.commit()
    return {
        "variant": variant,
        "deliveries": done,
        "backend_us_per_delivery": round(cpu * 1e6 / done, 1),
        "wall_us_per_delivery": round(wall * 1e6 / done, 1),
        "verified": sent == done == rows,
    }


def run(server: str, rows: int, batch: int, rounds: int) -> dict[str, Any]:
    created = make_url(create_database(server, DATABASE))
    url = created.set(drivername="postgresql").render_as_string(hide_password=False)  # libpq's
    results = []
    try:
        for _ in range(rounds):
            results += [measure(url, variant, rows, batch) for variant in VARIANTS]
    finally:
        drop_database_on(server, DATABASE)
    by_variant = {
        v: sorted(r["backend_us_per_delivery"] for r in results if r["variant"] == v)
        for v in VARIANTS
    }
    return {
        "benchmark": "pg_row_writes",
        "machine": describe(),
        "rows": rows,
        "batch": batch,
        "backend_us_per_delivery": by_variant,
        "results": results,
        "verified": all(r["verified"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--database-url", default=DEFAULT_SERVER, help="PostgreSQL server")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.database_url, args.rows, args.batch, args.rounds)
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
