"""SIGTERM to `sopbot worker`: it stops claiming, finishes the batch it is
sending, gives back nothing half-done, says it stopped, and exits 0 within the
stop grace period (docker compose: stop_grace_period 30s)."""

from __future__ import annotations

import time

import pytest
from harness import (
    add_mock_channel,
    pending,
    release,
    seed_parked,
    start_worker,
    wait_until,
    witness,
)
from sqlalchemy import func, select, update

from channels.models import ChannelInstance
from scheduler.operations.models import Worker
from scheduler.outbox.models import Delivery

pytestmark = pytest.mark.postgres

STOP_GRACE = 30.0


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(scale_url, scale_engine, workdir):
    n = 200
    add_mock_channel(scale_engine, "slow", latency_ms=1_500)
    seed_parked(scale_engine, n, "slow")
    worker = start_worker(scale_url, "w1", workdir, claim_batch_size=50, lease_seconds=60)
    try:
        wait_until(worker.alive, 10)
        release(scale_engine)

        def sending() -> int:
            with scale_engine.connect() as conn:
                return conn.execute(
                    select(func.count()).where(
                        Delivery.lease_owner == "w1", Delivery.status == "sending"
                    )
                ).scalar_one()

        wait_until(lambda: sending() > 0, 30, interval=0.02, what="a batch in the channel")
        asked = time.monotonic()
        code = worker.terminate(timeout=STOP_GRACE)
        took = time.monotonic() - asked
    finally:
        worker.close()
    assert code == 0, worker.output()[-3000:]
    assert took < STOP_GRACE

    with scale_engine.connect() as conn:
        held = conn.execute(select(func.count()).where(Delivery.lease_owner == "w1")).scalar_one()
        stopped_at = conn.execute(select(Worker.stopped_at).where(Worker.id == "w1")).scalar_one()
    assert held == 0  # nothing left claimed or sending under its name
    assert stopped_at is not None  # gone from the live list at once
    seen = witness(scale_engine)
    sent = seen.statuses.get("sent", 0)
    assert sent >= 50 and sent % 50 == 0  # whole batches: the one in hand was finished
    assert seen.statuses == {"sent": sent, "scheduled": n - sent}
    assert seen.mock_distinct == sent and seen.duplicates == 0

    # Whoever comes next sends the rest, once.
    with scale_engine.begin() as conn:
        conn.execute(update(ChannelInstance).values(config={"latency_ms": 0}))
    successor = start_worker(scale_url, "w2", workdir)
    try:
        wait_until(lambda: pending(scale_engine) == 0, 60, what="the rest sent")
        assert successor.terminate() == 0
    finally:
        successor.close()
    seen = witness(scale_engine)
    assert seen.statuses == {"sent": n} and seen.mock_distinct == n and seen.duplicates == 0
