"""`kill -9` of a worker mid-dispatch, then a restart: zero duplicates, every
delivery terminal, expired `claimed` rows sent by the restarted worker,
`sending` rows resolved as `unknown` with a reason (at-most-once)."""

from __future__ import annotations

import pytest
from harness import (
    add_mock_channel,
    backends_gone,
    pending,
    release,
    seed_parked,
    start_worker,
    wait_until,
    witness,
)
from sqlalchemy import select, update

from channels.models import ChannelInstance, MockMessage
from scheduler.outbox.models import Delivery

pytestmark = pytest.mark.postgres

LEASE = 5  # seconds (the minimum): the restarted worker reaps soon after


def _held_by(engine, owner: str, status: str) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(Delivery.id).where(Delivery.lease_owner == owner, Delivery.status == status)
            ).scalars()
        )


def _set_latency(engine, channel: str, latency_ms: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(ChannelInstance)
            .where(ChannelInstance.name == channel)
            .values(config={"latency_ms": latency_ms})
        )


def _restart_and_finish(url, engine, workdir):
    restarted = start_worker(url, "victim", workdir, lease_seconds=LEASE)
    try:
        wait_until(lambda: pending(engine) == 0, 60, interval=0.2, what="every delivery terminal")
        assert restarted.terminate() == 0
    finally:
        restarted.close()


def test_kill_9_while_sending_leaves_unknown_never_a_duplicate(scale_url, scale_engine, workdir):
    n = 120
    add_mock_channel(scale_engine, "slow", latency_ms=4_000)  # the kill lands inside this call
    seed_parked(scale_engine, n, "slow")
    victim = start_worker(scale_url, "victim", workdir, lease_seconds=LEASE, claim_batch_size=40)
    try:
        wait_until(victim.alive, 10)
        release(scale_engine)
        wait_until(lambda: _held_by(scale_engine, "victim", "sending"), 30, interval=0.02)
        victim.kill()
    finally:
        victim.close()
    # Read after the kill, once its last COMMIT has landed: with the dispatch
    # pipeline a second batch may have reached the channel between a look and the kill.
    backends_gone(scale_engine, "victim")
    in_flight = _held_by(scale_engine, "victim", "sending")
    k = len(in_flight)
    assert 0 < k < n, "the kill should land while a batch is with the channel"

    _set_latency(scale_engine, "slow", 0)  # the restarted worker gets a fast channel
    _restart_and_finish(scale_url, scale_engine, workdir)

    seen = witness(scale_engine)
    assert seen.pending == 0
    assert seen.statuses == {"sent": n - k, "unknown": k}
    assert seen.duplicates == 0 and seen.sent_without_record == 0
    with scale_engine.connect() as conn:
        unknown = conn.execute(
            select(Delivery.id, Delivery.reason).where(Delivery.status == "unknown")
        ).all()
        recorded = set(conn.execute(select(MockMessage.delivery_id)).scalars())
    assert {row.id for row in unknown} == in_flight
    assert all("worker stopped while sending" in row.reason for row in unknown)
    # The channel may have got what was in flight when the kill landed (the
    # mock records a message while its call lasts): those are the only
    # records of a delivery not sent, once each, never resent.
    assert seen.recorded_not_sent == len(recorded & in_flight)


def test_kill_9_after_claiming_resends_the_claimed_rows(scale_url, scale_engine, workdir):
    # One large batch: rendering it takes long enough to kill the worker
    # between the claim and the send. A worker claims a whole batch only once
    # it has timed its channel's calls, so a few deliveries go first.
    n, warm = 6_000, 10
    add_mock_channel(scale_engine, "fast")
    seed_parked(scale_engine, warm, "fast", prefix="warm_up")
    victim = start_worker(scale_url, "victim", workdir, lease_seconds=LEASE, claim_batch_size=n)
    try:
        wait_until(victim.alive, 10)
        release(scale_engine)
        wait_until(lambda: pending(scale_engine) == 0, 30, what="the warm-up sent")
        seed_parked(scale_engine, n, "fast")
        release(scale_engine)
        wait_until(lambda: _held_by(scale_engine, "victim", "claimed"), 30, interval=0.005)
        victim.kill()
    finally:
        victim.close()
    backends_gone(scale_engine, "victim")
    # On an idle machine the kill lands before anything is marked sending; on a
    # loaded one the worker may have marked a first wave by then. Both are
    # held: the claimed rows must be sent again, the sending ones settle as
    # `unknown` (their calls may or may not have run) and are never resent.
    claimed = _held_by(scale_engine, "victim", "claimed")
    marked = _held_by(scale_engine, "victim", "sending")
    assert claimed, "the kill should land while rows are claimed"
    assert len(claimed) + len(marked) <= n

    _restart_and_finish(scale_url, scale_engine, workdir)

    seen = witness(scale_engine)
    assert seen.statuses == (
        {"sent": n + warm - len(marked), "unknown": len(marked)} if marked else {"sent": n + warm}
    )
    assert seen.duplicates == 0
    with scale_engine.connect() as conn:
        unknown = set(
            conn.execute(select(Delivery.id).where(Delivery.status == "unknown")).scalars()
        )
        recorded = set(conn.execute(select(MockMessage.delivery_id)).scalars())
    assert unknown == marked
    assert claimed <= recorded  # every claimed row was sent, once
