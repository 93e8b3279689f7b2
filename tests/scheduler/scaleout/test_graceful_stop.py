"""SIGTERM to `sopbot worker`: it stops claiming, finishes the batch it is
sending, gives back nothing half-done, says it stopped, and exits 0 within the
stop grace period (docker compose: stop_grace_period 30s)."""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import (
    SlowWebhook,
    add_mock_channel,
    add_webhook_channel,
    ids_by_status,
    pending,
    release,
    seed_parked,
    start_worker,
    statuses,
    wait_until,
    witness,
)
from sqlalchemy import func, select, update

from scheduler.operations.models import Worker
from scheduler.outbox.models import Delivery

pytestmark = pytest.mark.postgres

STOP_GRACE = 30.0


def test_sigterm_finishes_the_calls_in_flight_and_exits_0(scale_url, scale_engine, workdir):
    """Rows are marked ``sending`` a wave before their call starts, so the test
    waits for messages the channel has actually received (a webhook answering
    in 1.5 s), not for ``sending`` rows: a SIGTERM between the mark and the
    call rightly gives those rows back unsent."""
    n = 200
    receiver = SlowWebhook(1.5)
    try:
        add_webhook_channel(scale_engine, "hook", receiver.url, max_concurrency=8)
        seed_parked(scale_engine, n, "hook")
        worker = start_worker(scale_url, "w1", workdir, claim_batch_size=50, lease_seconds=60)
        try:
            wait_until(worker.alive, 10)
            release(scale_engine)
            wait_until(lambda: receiver.posts, 30, interval=0.02, what="a message in the channel")
            asked = time.monotonic()
            code = worker.terminate(timeout=STOP_GRACE)
            took = time.monotonic() - asked
        finally:
            worker.close()
        posted = receiver.posted_ids()
        accepted = set(receiver.answered)
    finally:
        receiver.close()
    assert code == 0, worker.output()[-3000:]
    assert took < STOP_GRACE

    with scale_engine.connect() as conn:
        held = conn.execute(select(func.count()).where(Delivery.lease_owner == "w1")).scalar_one()
        stopped_at = conn.execute(select(Worker.stopped_at).where(Worker.id == "w1")).scalar_one()
    assert held == 0  # nothing left claimed or sending under its name
    assert stopped_at is not None  # gone from the live list at once
    # Every call in flight was finished and recorded; nothing else was sent.
    sent = ids_by_status(scale_engine, "sent")
    assert posted and sent == posted == accepted
    assert statuses(scale_engine) == {"sent": len(sent), "scheduled": n - len(sent)}

    # Whoever comes next sends the rest, once.
    add_mock_channel(scale_engine, "mock")
    with scale_engine.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.status == "scheduled").values(channel="mock"))
    successor = start_worker(scale_url, "w2", workdir)
    try:
        wait_until(lambda: pending(scale_engine) == 0, 60, what="the rest sent")
        assert successor.terminate() == 0
    finally:
        successor.close()
    seen = witness(scale_engine)
    assert seen.statuses == {"sent": n} and seen.duplicates == 0
    assert seen.mock_distinct == n - len(sent)


SHUTDOWN_S = 5.0  # SOPBOT_SHUTDOWN_SECONDS: well under Docker's 10 s before SIGKILL
TEARDOWN_S = 3.0  # the interpreter's own exit on a loaded machine


@pytest.mark.faults
def test_sigterm_with_a_slow_channel_exits_within_the_bound(scale_url, scale_engine, workdir):
    """1 s per message and a whole claim (500 rows) in hand: the worker gives
    back what it has not handed to the channel, settles the calls in flight
    and exits 0 within SOPBOT_SHUTDOWN_SECONDS; nothing stays claimed or
    sending, and nothing the channel never saw is called `unknown`."""
    n = 600
    receiver = SlowWebhook(1.0)
    try:
        add_webhook_channel(scale_engine, "hook", receiver.url, max_concurrency=8)
        seed_parked(scale_engine, n, "hook")
        worker = start_worker(scale_url, "w1", workdir, shutdown_seconds=SHUTDOWN_S)
        try:
            wait_until(worker.alive, 10)
            release(scale_engine)
            wait_until(lambda: len(receiver.answered) >= 16, 30, interval=0.05, what="sending")
            asked = time.monotonic()
            try:
                code: int | None = worker.terminate(timeout=SHUTDOWN_S + TEARDOWN_S)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - asked
        finally:
            worker.close()
        posted = receiver.posted_ids()
        accepted = set(receiver.answered)
    finally:
        receiver.close()

    assert code == 0, (
        f"exit code {code} {took:.1f} s after SIGTERM (bound {SHUTDOWN_S:g} s); "
        f"{len(posted)} of {n} handed to the channel; {worker.output()[-800:]}"
    )
    assert took < SHUTDOWN_S + TEARDOWN_S
    assert not ids_by_status(scale_engine, "claimed", "sending"), statuses(scale_engine)
    unknown = ids_by_status(scale_engine, "unknown")
    assert unknown <= posted, f"{len(unknown - posted)} unknown that the channel never saw"
    assert ids_by_status(scale_engine, "sent") <= accepted
    final = statuses(scale_engine)
    assert set(final) <= {"sent", "scheduled", "unknown"} and sum(final.values()) == n
    assert final.get("scheduled", 0) > 0  # the rest was given back, for the next worker
