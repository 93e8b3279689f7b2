"""Several `sopbot worker` processes drain the same deliveries: every delivery
sent exactly once (the mock channel's own record is the witness), none left,
and the work really is shared."""

from __future__ import annotations

import pytest
from harness import (
    add_mock_channel,
    pending,
    release,
    seed_parked,
    wait_until,
    witness,
    worker_totals,
    workers,
)

pytestmark = pytest.mark.postgres


def _drain(url, engine, workdir, n: int, n_workers: int, timeout: float, **settings) -> None:
    seed_parked(engine, n, "shared")
    with workers(url, engine, n_workers, workdir, **settings) as procs:
        release(engine)
        wait_until(lambda: pending(engine) == 0, timeout, interval=0.2, what="drained")
        codes = [p.terminate(timeout=30) for p in procs]
    assert codes == [0] * n_workers

    seen = witness(engine)
    assert seen.statuses == {"sent": n}, seen.why_not_sent
    assert seen.mock_messages == n and seen.mock_distinct == n  # exactly once each
    assert seen.duplicates == 0 and seen.sent_without_record == 0 == seen.recorded_not_sent
    totals = worker_totals(engine)
    assert sorted(totals) == [f"w{i + 1}" for i in range(n_workers)]
    assert sum(t["sent"] for t in totals.values()) == n
    assert all(t["claimed"] > 0 for t in totals.values()), f"a worker did nothing: {totals}"


@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_drain_the_same_deliveries_exactly_once(
    scale_url, scale_engine, workdir, n_workers
):
    # Reduced for the default run: a little channel latency and small batches so
    # every worker gets its share.
    add_mock_channel(scale_engine, "shared", latency_ms=5, max_batch=25)
    _drain(scale_url, scale_engine, workdir, 3_000, n_workers, 120, claim_batch_size=100)


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_drain_50000_deliveries_exactly_once(scale_url, scale_engine, workdir, n_workers):
    add_mock_channel(scale_engine, "shared")
    _drain(scale_url, scale_engine, workdir, 50_000, n_workers, 600, claim_batch_size=500)
