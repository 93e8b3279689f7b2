"""A channel change reaches every running process, without a restart.

Two real ``sopbot worker`` processes on a PostgreSQL database of their own send
through a mock channel; the operator then disables it, edits its config and
re-enables it from another process (this one, through the channel service, as
the API does). Each change must hold in both workers within a few seconds
(``channels.registry.REFRESH_SECONDS`` plus a batch); the mock channel's own
record of what it received is the witness.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    add_mock_channel,
    release_template,
    seed_parked,
    template_outcomes,
    wait_until,
    worker_totals,
    workers,
)
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from channels import service as channels_service
from channels.models import ChannelInstance, MockMessage
from channels.registry import REFRESH_SECONDS, ensure_instance
from scheduler.outbox.models import Delivery
from sopbot.db import session_scope

pytestmark = pytest.mark.postgres

CHANNEL = "shop"
PER_PHASE = 120
# What "within a few seconds" means here: the pool's refresh plus a batch in hand.
# The workers are other processes, so this bound is waited out, not injected.
TAKES_EFFECT_S = REFRESH_SECONDS + 2.0


def _statuses(outcomes: dict[tuple[str, str | None], int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (status, _), n in outcomes.items():
        counts[status] = counts.get(status, 0) + n
    return counts


def _settled(engine: Engine, template_id: int) -> bool:
    return all(status in ("sent", "failed") for status, _ in template_outcomes(engine, template_id))


def _received(engine: Engine, template_id: int) -> int:
    """How many of this template's deliveries the mock channel received."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(MockMessage)
                .join(Delivery, Delivery.id == MockMessage.delivery_id)  # type: ignore[arg-type]
                .where(Delivery.template_id == template_id)  # type: ignore[arg-type]
            ).scalar_one()
        )


def _change(engine: Engine, **patch: Any) -> None:
    with session_scope(engine) as session:
        channels_service.update_instance(
            session, CHANNEL, channels_service.ChannelInstanceUpdate(**patch)
        )


def _phase(engine: Engine, template_id: int) -> dict[tuple[str, str | None], int]:
    release_template(engine, template_id)
    try:
        wait_until(lambda: _settled(engine, template_id), 60, interval=0.2, what="settled")
    except TimeoutError as exc:
        raise AssertionError(f"not settled: {template_outcomes(engine, template_id)}") from exc
    return template_outcomes(engine, template_id)


def test_disable_and_edit_reach_both_workers_without_restart(
    scale_url: str, scale_engine: Engine, tmp_path: Path
) -> None:
    add_mock_channel(scale_engine, CHANNEL, latency_ms=5, max_batch=10)
    phases = [seed_parked(scale_engine, PER_PHASE, CHANNEL, prefix=f"wm_p{i}") for i in range(4)]
    before, disabled, edited, restored = phases

    with workers(scale_url, scale_engine, 2, tmp_path, claim_batch_size=10) as procs:
        # Both workers build their adapter from the first config and send.
        assert _statuses(_phase(scale_engine, before)) == {"sent": PER_PHASE}
        assert _received(scale_engine, before) == PER_PHASE

        # Disabled in another process: neither worker sends through it any more.
        _change(scale_engine, enabled=False)
        time.sleep(TAKES_EFFECT_S)
        outcomes = _phase(scale_engine, disabled)
        assert _received(scale_engine, disabled) == 0
        assert outcomes == {("failed", f"channel instance {CHANNEL!r} is disabled"): PER_PHASE}

        # Enabled with a new config: the next sends use it (this mock now refuses).
        _change(scale_engine, enabled=True, config={"fail_mode": "permanent"})
        time.sleep(TAKES_EFFECT_S)
        outcomes = _phase(scale_engine, edited)
        assert _received(scale_engine, edited) == 0
        assert outcomes == {("failed", "mock: simulated permanent error"): PER_PHASE}

        # And back: sent again, by both workers, still without a restart.
        _change(scale_engine, config={"fail_mode": "none"})
        time.sleep(TAKES_EFFECT_S)
        assert _statuses(_phase(scale_engine, restored)) == {"sent": PER_PHASE}
        assert _received(scale_engine, restored) == PER_PHASE

        assert all(p.alive() for p in procs)
    totals = worker_totals(scale_engine)
    assert sorted(totals) == ["w1", "w2"]
    assert all(t["claimed"] > 0 for t in totals.values()), totals


def test_many_processes_create_the_default_channel_at_once(scale_engine: Engine) -> None:
    """Start-up on a new database: every process ensures the ``mock`` channel;
    all of them succeed and there is one row."""
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    names: list[str] = []

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            with session_scope(scale_engine) as session:
                names.append(ensure_instance(session, "mock", "mock").name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert names == ["mock"] * n
    with scale_engine.connect() as conn:
        rows = conn.execute(
            select(func.count()).select_from(ChannelInstance).where(ChannelInstance.name == "mock")  # type: ignore[arg-type]
        ).scalar_one()
    assert rows == 1
