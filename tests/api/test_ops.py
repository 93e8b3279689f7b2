"""/healthz, /api/workers and /metrics as an operator (or Prometheus) sees them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from auth_helpers import make_auth_headers
from factories import add_contact, enroll, new_friend_spec, publish
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.routes import ops
from channels.breaker import CircuitBreakers
from channels.registry import ensure_instance
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def _app(engine, clock, settings, *, metrics_cache_seconds: float):
    clock.set(T0)
    return create_app(
        settings.model_copy(update={"metrics_cache_seconds": metrics_cache_seconds}),
        engine=engine,
        clock=clock,
        run_scheduler=False,
    )


@pytest.fixture
def client(engine, clock, settings):
    with TestClient(_app(engine, clock, settings, metrics_cache_seconds=0)) as c:
        c.headers.update(make_auth_headers(engine, T0))
        yield c


def _metrics(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _due_welcomes(engine, n: int, joined: datetime) -> None:
    template_id = publish(engine, new_friend_spec(), joined)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", joined) for i in range(n)]
    enroll(engine, template_id, [(c, joined) for c in contacts], joined)


def test_healthz_reports_backlog_oldest_overdue_and_no_live_worker(client, engine):
    _due_welcomes(engine, 2, T0 - timedelta(minutes=10))
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["backlog"] == 2 and health["backlog_more"] is False
    assert health["oldest_overdue"]["overdue_seconds"] == 600
    assert health["oldest_due"] == health["oldest_overdue"]["run_at"]
    assert health["live_workers"] == 0 and health["workers"] == []
    assert "no scheduler process is alive" in health["warnings"][0]


def test_healthz_counts_the_backlog_up_to_its_limit(client, engine, monkeypatch):
    """A probe does not scan a whole burst: past the limit it says "more";
    /api/workers counts every row."""
    monkeypatch.setattr(ops, "HEALTH_BACKLOG_COUNT", 2)
    _due_welcomes(engine, 3, T0 - timedelta(minutes=10))
    health = client.get("/healthz").json()
    assert (health["backlog"], health["backlog_more"]) == (2, True)
    assert health["oldest_overdue"]["overdue_seconds"] == 600
    assert "more than 2 deliveries are due" in health["warnings"][0]
    assert client.get("/api/workers").json()["backlog"] == 3


def test_healthz_and_workers_list_a_live_worker(client, clock):
    runtime = client.app.state.runtime
    asyncio.run(runtime.heartbeat_tick())
    health = client.get("/healthz").json()
    assert health["live_workers"] == 1 and health["workers"] == ["test-worker"]
    assert health["warnings"] == []

    workers = client.get("/api/workers").json()
    assert workers["live_workers"] == 1
    assert workers["workers"][0]["id"] == "test-worker"
    assert workers["workers"][0]["live"] is True

    clock.advance(minutes=5)  # the worker went silent
    assert client.get("/api/workers").json()["workers"] == []
    gone = client.get("/api/workers", params={"include_gone": True}).json()["workers"]
    assert [(w["id"], w["live"]) for w in gone] == [("test-worker", False)]


def test_metrics_count_deliveries_and_dispatch(client, engine, clock):
    _due_welcomes(engine, 3, T0 - timedelta(minutes=10))
    before = _metrics(client)
    assert before[("sopbot_deliveries", (("status", "scheduled"),))] == 9  # 3 touchpoints x 3
    assert before[("sopbot_backlog", ())] == 3
    assert before[("sopbot_oldest_overdue_seconds", ())] == 600
    assert before[("sopbot_workers_live", ())] == 0
    assert before[("sopbot_database_up", ())] == 1

    runtime = client.app.state.runtime
    asyncio.run(runtime.dispatch_tick())
    asyncio.run(runtime.heartbeat_tick())
    after = _metrics(client)
    assert after[("sopbot_deliveries", (("status", "sent"),))] == 3
    assert after[("sopbot_backlog", ())] == 0
    assert after[("sopbot_workers_live", ())] == 1
    assert after[("sopbot_worker_sent_total", (("worker", "test-worker"),))] == 3
    assert after[("sopbot_dispatched_total", (("outcome", "sent"),))] == 3
    # sent 10 minutes after due: in the 900 s bucket, not the 300 s one
    assert after[("sopbot_delivery_lateness_seconds_count", ())] == 3
    assert after[("sopbot_delivery_lateness_seconds_bucket", (("le", "300.0"),))] == 0
    assert after[("sopbot_delivery_lateness_seconds_bucket", (("le", "900.0"),))] == 3
    assert after[("sopbot_dispatch_batch_seconds_count", ())] == 1


def test_metrics_count_channel_errors(client, engine):
    with session_scope(engine) as session:
        ensure_instance(session, "flaky", "mock", {"fail_mode": "permanent"})
    template_id = publish(engine, new_friend_spec(name="flaky SOP", channel="flaky"), T0)
    contact = add_contact(engine, "wm_f", "F", T0)
    enroll(engine, template_id, [(contact, T0)], T0)
    asyncio.run(client.app.state.runtime.dispatch_tick())
    samples = _metrics(client)
    key = ("sopbot_channel_errors_total", (("channel", "flaky"), ("kind", "permanent")))
    assert samples[key] == 1
    assert samples[("sopbot_deliveries", (("status", "failed"),))] == 1


def test_metrics_show_breaker_state(client, engine, clock):
    CircuitBreakers(engine, "test").trip("mock", clock.now(), clock.now() + timedelta(hours=1), "x")
    samples = _metrics(client)
    assert samples[("sopbot_channel_breaker_state", (("channel", "mock"), ("state", "open")))] == 1
    assert (
        samples[("sopbot_channel_breaker_state", (("channel", "mock"), ("state", "closed")))] == 0
    )
    assert samples[("sopbot_channel_breaker_trips_total", (("channel", "mock"),))] == 1


def test_database_figures_are_cached_between_scrapes(engine, clock, settings):
    with TestClient(_app(engine, clock, settings, metrics_cache_seconds=3600)) as client:
        assert _metrics(client)[("sopbot_backlog", ())] == 0
        _due_welcomes(engine, 2, T0)
        assert _metrics(client)[("sopbot_backlog", ())] == 0  # the cached reading
        assert client.get("/healthz").json()["backlog"] == 2  # healthz reads live


def test_each_app_has_its_own_registry(engine, clock, settings):
    """Two apps in one process (as in tests) do not clash: nothing is global."""
    apps = [create_app(settings, engine=engine, clock=clock, run_scheduler=False) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        assert a.get("/metrics").status_code == 200 and b.get("/metrics").status_code == 200
        assert a.app.state.metrics_registry is not b.app.state.metrics_registry


def test_health_and_metrics_are_open_but_workers_need_a_user(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as anonymous:
        assert anonymous.get("/healthz").status_code == 200  # load balancers
        assert anonymous.get("/metrics").status_code == 200  # Prometheus
        assert anonymous.get("/api/workers").status_code == 401
