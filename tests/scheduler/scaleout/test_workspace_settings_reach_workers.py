"""Workspace settings saved in one process reach a running ``sopbot worker``
without a restart.

A real worker process on a PostgreSQL database of its own sends a first batch
freely; then this process saves workspace quiet hours covering now (policy
skip) the way 设置 does (``api.workspace_settings.save``: the values and the
version counter). Within ``SOPBOT_WORKSPACE_REFRESH_SECONDS`` plus a batch the
worker skips the next batch for the quiet hours; the deliveries' statuses and
reasons are the witness.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from harness import add_mock_channel, now, seed_parked, wait_until, workers
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from api import workspace_settings
from scheduler.outbox.models import Delivery
from sopbot.db import session_scope

pytestmark = pytest.mark.postgres

CHANNEL = "shop"
PER_PHASE = 40
REFRESH_S = 0.5
# The worker is another process: this bound is waited out, not injected.
TAKES_EFFECT_S = REFRESH_S + 2.0


def _release(engine: Engine, template_id: int) -> None:
    at = func.now()
    with engine.begin() as conn:
        conn.execute(
            update(Delivery)
            .where(Delivery.template_id == template_id)  # type: ignore[arg-type]
            .values(due_at=at, run_at=at)
        )


def _outcomes(engine: Engine, template_id: int) -> dict[tuple[str, str | None], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.status, Delivery.reason, func.count())  # type: ignore[call-overload]
            .where(Delivery.template_id == template_id)
            .group_by(Delivery.status, Delivery.reason)
        ).all()
    return {(r[0], r[1]): r[2] for r in rows}


def _phase(engine: Engine, template_id: int) -> dict[tuple[str, str | None], int]:
    _release(engine, template_id)
    wait_until(
        lambda: all(s in ("sent", "skipped", "failed") for s, _ in _outcomes(engine, template_id)),
        60,
        interval=0.2,
        what="settled",
    )
    return _outcomes(engine, template_id)


def test_quiet_hours_saved_elsewhere_hold_in_a_running_worker(
    scale_url: str, scale_engine: Engine, tmp_path: Path
) -> None:
    add_mock_channel(scale_engine, CHANNEL, latency_ms=1, max_batch=20)
    before = seed_parked(scale_engine, PER_PHASE, CHANNEL, prefix="ws_a")
    after = seed_parked(scale_engine, PER_PHASE, CHANNEL, prefix="ws_b")

    with workers(
        scale_url, scale_engine, 1, tmp_path, workspace_refresh_seconds=REFRESH_S
    ) as procs:
        assert {status for status, _ in _phase(scale_engine, before)} == {"sent"}

        # 设置 saved in another process: quiet hours around now (Shanghai), skip.
        local = now().astimezone(ZoneInfo("Asia/Shanghai"))
        start = (local - timedelta(hours=1)).strftime("%H:%M")
        end = (local + timedelta(hours=1)).strftime("%H:%M")
        values, errors = workspace_settings.check(
            {
                "default_timezone": "Asia/Shanghai",
                "quiet_start": start,
                "quiet_end": end,
                "quiet_hours_policy": "skip",
                "frequency_cap": "",
                "frequency_cap_policy": "defer",
            }
        )
        assert not errors
        with session_scope(scale_engine) as session:
            workspace_settings.save(session, values, now())
        time.sleep(TAKES_EFFECT_S)

        outcomes = _phase(scale_engine, after)
        assert sum(outcomes.values()) == PER_PHASE
        assert all(status == "skipped" for status, _ in outcomes), outcomes
        assert all("quiet" in (reason or "") for _, reason in outcomes), outcomes
        assert procs[0].alive()
