"""Forecast before publish: computed without writing, and what publishing then
creates has the same counts."""

from __future__ import annotations

import time

import pytest
from factories import plan_when_due
from sqlalchemy import func, select

from benchmarks import forecast as bench
from scheduler.flows import forecast as forecasting
from scheduler.flows import lifecycle
from scheduler.outbox import policies
from scheduler.outbox.models import Delivery, Enrollment
from sop_templates import service as templates_service
from sopbot.db import session_scope

NOW = bench.NOW


def _row_counts(engine) -> tuple[int, int]:
    with session_scope(engine) as session:
        return (
            session.execute(select(func.count()).select_from(Delivery)).scalar_one(),
            session.execute(select(func.count()).select_from(Enrollment)).scalar_one(),
        )


def _forecast_then_publish(engine, contacts: int) -> tuple[forecasting.Forecast, float, dict]:
    template_id = bench.seed(engine, contacts)
    before = _row_counts(engine)
    with session_scope(engine) as session:
        started = time.perf_counter()
        result = forecasting.forecast(
            session, template_id, NOW, workspace=policies.WorkspaceDefaults()
        )
        seconds = time.perf_counter() - started
    assert _row_counts(engine) == before  # nothing written
    with session_scope(engine) as session:
        lifecycle.publish(session, template_id, NOW, bench.ACTOR)
    plan_when_due(engine)  # the rows the planner writes later
    return result, seconds, bench.published_counts(engine, template_id)


def test_forecast_counts_equal_what_publishing_creates(engine):
    result, _, published = _forecast_then_publish(engine, 400)
    assert bench.forecast_counts(result) == published
    assert result.targets == 360  # every tenth contact carries the exit tag
    assert 10 <= result.held_out <= 70
    reasons = {r.reason: r.count for r in result.skipped_reasons}
    assert reasons["holdout"] == result.held_out * 3
    # the other live SOP sends at 12:00 on day 1: the WeCom daily cap defers ours
    assert result.overlap_targets == result.targets - result.held_out
    assert result.capped and result.capped[0].reason == "frequency cap wecom_daily"
    assert len(result.days) == 30 and sum(d.total for d in result.days) == (result.scheduled)
    assert len(result.rows) == 100
    assert [r.at for r in result.rows] == sorted(r.at for r in result.rows)
    assert result.rows[0].target_name.startswith("学员")


def test_forecast_day_counts_match_the_published_rows_without_caps(engine):
    template_id = bench.seed(engine, 200, overlap=False)
    with session_scope(engine) as session:
        templates_service.update_draft(
            session, template_id, bench.draft_spec(frequency_cap="off", quiet_hours="off"), NOW
        )
        result = forecasting.forecast(session, template_id, NOW)
        lifecycle.publish(session, template_id, NOW, bench.ACTOR)
    plan_when_due(engine)  # the rows the planner writes later
    zone = "Asia/Shanghai"
    from zoneinfo import ZoneInfo

    published: dict[str, int] = {}
    with session_scope(engine) as session:
        for (run_at,) in session.execute(
            select(Delivery.run_at).where(Delivery.status == "scheduled")  # type: ignore[arg-type]
        ).all():
            day = run_at.astimezone(ZoneInfo(zone)).date().isoformat()
            published[day] = published.get(day, 0) + 1
    forecast_days = {d.day.isoformat(): d.total for d in result.days if d.total}
    assert forecast_days == published


def test_forecast_api_and_a_draft_that_is_not_valid(engine, client):
    template_id = bench.seed(engine, 50, overlap=False)
    answer = client.post(f"/api/templates/{template_id}/forecast")
    assert answer.status_code == 200, answer.text
    assert answer.json()["targets"] == 45
    assert client.post("/api/templates/999/forecast").status_code == 404
    with session_scope(engine) as session:
        from sop_templates.models import SopTemplate

        template = session.get(SopTemplate, template_id)
        template.draft = {**template.draft, "touchpoints": []}  # type: ignore[union-attr]
        session.add(template)
    answer = client.post(f"/api/templates/{template_id}/forecast")
    assert answer.status_code == 409 and "not valid" in answer.json()["detail"]


@pytest.mark.slow
def test_forecast_of_a_100000_contact_segment_within_5_seconds(engine):
    result, seconds, published = _forecast_then_publish(engine, 100_000)
    assert seconds < 5.0
    assert bench.forecast_counts(result) == published
