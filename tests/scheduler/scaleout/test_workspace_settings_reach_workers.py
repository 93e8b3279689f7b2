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
from harness import (
    add_mock_channel,
    now,
    release_template,
    seed_parked,
    template_outcomes,
    wait_until,
    workers,
)
from sqlalchemy.engine import Engine

from api import workspace_settings
from sopbot.db import session_scope

pytestmark = pytest.mark.postgres

CHANNEL = "shop"
PER_PHASE = 40
REFRESH_S = 0.5
# The worker is another process: this bound is waited out, not injected.
TAKES_EFFECT_S = REFRESH_S + 2.0


def _phase(engine: Engine, template_id: int) -> dict[tuple[str, str | None], int]:
    release_template(engine, template_id)
    wait_until(
        lambda: all(
            s in ("sent", "skipped", "failed") for s, _ in template_outcomes(engine, template_id)
        ),
        60,
        interval=0.2,
        what="settled",
    )
    return template_outcomes(engine, template_id)


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
