"""A slow channel must not be sent to twice: a webhook answering each POST in
2 s, a 20 s lease and three workers draining 1,200 deliveries. A worker must
keep the leases of what it holds while its calls run, so no other worker reaps
and re-sends them: every Idempotency-Key reaches the server exactly once, and
every delivery ends `sent` with the receiver's message id."""

from __future__ import annotations

import time

import pytest
from harness import (
    SlowWebhook,
    add_webhook_channel,
    pending,
    release,
    seed_parked,
    statuses,
    wait_until,
    workers,
)
from sqlalchemy import select

from scheduler.outbox.models import Delivery

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

N = 1_200
DELAY_S = 2.0
LEASE_S = 20
N_WORKERS = 3
CONCURRENCY = 32  # the webhook's default requests in flight per worker


def test_a_2_s_webhook_gets_every_key_exactly_once(scale_url, scale_engine, workdir):
    server = SlowWebhook(DELAY_S)
    try:
        add_webhook_channel(scale_engine, "hook", server.url, max_concurrency=CONCURRENCY)
        seed_parked(scale_engine, N, "hook")
        with workers(scale_url, scale_engine, N_WORKERS, workdir, lease_seconds=LEASE_S) as procs:
            started = time.monotonic()
            release(scale_engine)
            # Done when drained, or as soon as a key arrives twice (the fault).
            wait_until(
                lambda: pending(scale_engine) == 0 or server.duplicates,
                240,
                interval=0.5,
                what="drained",
            )
            took = time.monotonic() - started
            codes = [p.terminate(timeout=30) for p in procs]
        posted, duplicates = dict(server.posts), server.duplicates
    finally:
        server.close()

    ideal = N * DELAY_S / (N_WORKERS * CONCURRENCY)
    assert not duplicates, (
        f"{len(duplicates)} of {len(posted)} keys POSTed more than once "
        f"({sum(posted.values())} POSTs in {took:.0f} s); statuses {statuses(scale_engine)}"
    )
    assert len(posted) == N and set(posted.values()) == {1}
    assert statuses(scale_engine) == {"sent": N}
    with scale_engine.connect() as conn:
        rows = conn.execute(select(Delivery.id, Delivery.provider_message_id)).all()
    assert all(row.provider_message_id == f"wh-{row.id}" for row in rows)
    assert codes == [0] * N_WORKERS
    # Not a race to the finish, but no crawl either: within 4x the bound set by
    # the requests in flight (ideal {ideal:.0f} s).
    assert took < 4 * ideal + 20, f"drained in {took:.0f} s, ideal {ideal:.0f} s"
