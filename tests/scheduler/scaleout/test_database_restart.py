"""PostgreSQL restarts while workers drain (a private server the test stops for
10 s and starts again, as a minor-version upgrade or a failover does): what the
channel accepted during the outage is recorded `sent` once the database is
back, never `unknown`, and nothing is sent twice.

Two channels: the webhook (idempotent: a reaped row would be POSTed again; the
local server counts every key and knows what it accepted) and the mock without
its own table (not idempotent: a reaped row would end `unknown`; every call it
gets succeeds, so everything must end `sent`)."""

from __future__ import annotations

import time

import pytest
from harness import (
    SlowWebhook,
    add_mock_channel,
    add_webhook_channel,
    db_upgrade,
    ids_by_status,
    pending,
    release,
    seed_parked,
    statuses,
    wait_until,
    workers,
)
from pgtools import create_database

from sopbot.db import make_engine

pytestmark = pytest.mark.faults

N = 600
OUTAGE_S = 10.0
LEASE_S = 20  # the outage fits in a lease: the workers live, nothing is theirs to lose
SETTINGS = {"lease_seconds": LEASE_S, "claim_batch_size": 100}


def _drain_through_a_restart(server, url, engine, workdir, *, sent_before) -> float:
    """Release, stop the server once ``sent_before()`` is true, start it again
    after OUTAGE_S; returns when every delivery is terminal."""
    with workers(url, engine, 2, workdir, **SETTINGS) as procs:
        release(engine)
        wait_until(sent_before, 60, interval=0.05, what="a first part sent")
        engine.dispose()
        server.stop()
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)
        server.start()
        outage = time.monotonic() - stopped
        wait_until(lambda: pending(engine) == 0, 180, interval=0.5, what="drained after restart")
        for p in procs:
            assert p.alive(), p.output()[-3000:]
        codes = [p.terminate(timeout=30) for p in procs]
    assert codes == [0, 0]
    return outage


def test_webhook_accepted_during_a_restart_is_sent_once(private_pg, workdir):
    url = create_database(private_pg.url, "sopbot_restart")
    db_upgrade(url, workdir)
    engine = make_engine(url)
    receiver = SlowWebhook(0.5)
    try:
        add_webhook_channel(engine, "hook", receiver.url, max_concurrency=8)
        seed_parked(engine, N, "hook")
        outage = _drain_through_a_restart(
            private_pg, url, engine, workdir, sent_before=lambda: len(receiver.answered) >= 100
        )
        posted, duplicates, accepted = dict(receiver.posts), receiver.duplicates, receiver.answered
        final = statuses(engine)
        sent = ids_by_status(engine, "sent")
    finally:
        receiver.close()
        engine.dispose()
    assert outage >= OUTAGE_S
    assert "unknown" not in final, final
    assert accepted <= sent, f"{len(accepted - sent)} accepted but not sent; {final}"
    assert not duplicates, f"{len(duplicates)} keys POSTed more than once; {final}"
    assert final == {"sent": N} and len(posted) == N


def test_mock_calls_during_a_restart_all_end_sent(private_pg, workdir):
    url = create_database(private_pg.url, "sopbot_restart")
    db_upgrade(url, workdir)
    engine = make_engine(url)
    try:
        # One message per call, 0.5 s each, 8 calls in flight per worker: ~20 s
        # of work, the outage in the middle. No table of its own: the database
        # being down must not fail the channel's calls.
        add_mock_channel(engine, "slow", latency_ms=500, max_batch=1, persist=False)
        seed_parked(engine, N, "slow")
        _drain_through_a_restart(
            private_pg,
            url,
            engine,
            workdir,
            sent_before=lambda: len(ids_by_status(engine, "sent")) >= 100,
        )
        final = statuses(engine)
    finally:
        engine.dispose()
    assert final == {"sent": N}, final
