"""The circuit breaker: a failing channel is paused after a burst of failures,
held deliveries wait (not fail), and sends resume after a successful trial."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from api.app import create_app
from channels.breaker import BreakerConfig, CircuitBreakers
from channels.models import ChannelPolicy
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CONFIG = BreakerConfig(threshold=3, cooldown=timedelta(seconds=60))


def state(engine, name: str = "mock") -> dict:
    with Session(engine) as session:
        return CircuitBreakers(engine, "reader").states(session, [name])[name]


def test_opens_at_the_threshold_and_lets_one_worker_probe(engine):
    a = CircuitBreakers(engine, "worker-a", probe_wait=timedelta(seconds=10))
    b = CircuitBreakers(engine, "worker-b", probe_wait=timedelta(seconds=10))
    for n in (1, 2):
        assert (
            a.record("ch", successes=0, failures=1, error="HTTP 503", now=T0, config=CONFIG)
            == "closed"
        )
        assert state(engine, "ch")["consecutive_failures"] == n
    assert (
        a.record("ch", successes=0, failures=1, error="HTTP 503", now=T0, config=CONFIG) == "open"
    )

    held = a.admit(state(engine, "ch"), T0 + timedelta(seconds=30))
    assert held.open and held.until == T0 + timedelta(seconds=60)
    assert (
        "circuit breaker open until 2027-03-01 02:01:00 UTC after 3 consecutive failures"
        in held.reason
    )
    assert "(last error: HTTP 503)" in held.reason

    later = T0 + timedelta(seconds=61)
    probe = a.admit(state(engine, "ch"), later)
    assert (probe.allow, probe.probe) == (1, True)
    other = b.admit(state(engine, "ch"), later)  # the trial send is taken
    assert other.open and "another worker is making the trial send" in other.reason
    assert state(engine, "ch")["state"] == "half_open"

    # Trial failed: open again for another cool-down.
    assert (
        a.record("ch", successes=0, failures=1, error="HTTP 503", now=later, config=CONFIG)
        == "open"
    )
    assert state(engine, "ch")["trips"] == 2
    again = T0 + timedelta(seconds=122)
    assert b.admit(state(engine, "ch"), again).probe
    assert b.record("ch", successes=1, failures=0, error=None, now=again, config=CONFIG) == "closed"
    assert a.admit(state(engine, "ch"), again).allow is None


def test_a_success_resets_the_count_and_permanent_errors_do_not_count(engine):
    breakers = CircuitBreakers(engine, "w")
    breakers.record("ch", successes=0, failures=2, error="timeout", now=T0, config=CONFIG)
    breakers.record("ch", successes=5, failures=0, error=None, now=T0, config=CONFIG)
    assert state(engine, "ch")["consecutive_failures"] == 0
    # record() is only fed retryable/unknown failures; nothing at all is a no-op.
    assert (
        breakers.record("ch", successes=0, failures=0, error=None, now=T0, config=CONFIG)
        == "closed"
    )


async def test_failing_channel_opens_then_resumes_after_a_successful_trial(engine, clock, settings):
    clock.set(T0)
    with session_scope(engine) as session:
        session.add(
            ChannelPolicy(instance="mock", breaker_threshold=3, breaker_cooldown_seconds=60)
        )
    # One batch at a time: with a pipeline, the batch already admitted when the
    # breaker opens still goes out (as a second worker's would), one call more.
    one_at_a_time = {"claim_batch_size": 1, "dispatch_pipeline": 1}
    runtime = SchedulerRuntime(engine, clock, settings.model_copy(update=one_at_a_time))
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(8)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    mock = runtime.channels.get("mock")
    mock.config.fail_mode = "retryable"

    await runtime.dispatch_tick()

    assert mock.calls == 3  # the threshold; then the channel is left alone
    assert state(engine)["state"] == "open"
    rows = deliveries(engine)
    tried = [r for r in rows if r.attempts == 1]
    waiting = [r for r in rows if r.attempts == 0]
    assert len(tried) == 3 and all("retrying" in r.reason for r in tried)
    assert len(waiting) == 5
    assert {r.status for r in waiting} == {"scheduled"}  # paused, not failed
    assert {r.run_at for r in waiting} == {T0 + timedelta(seconds=60)}
    assert all("circuit breaker open" in r.reason for r in waiting)

    # Cool-down over, channel fixed: one trial send first, the rest wait briefly.
    mock.config.fail_mode = "none"
    clock.set(T0 + timedelta(seconds=61))
    runtime.dispatcher.settings = settings.model_copy(
        update={"claim_batch_size": 100, "dispatch_pipeline": 1}
    )
    await runtime.dispatch_tick()
    assert len(mock_sends(engine)) == 1
    assert state(engine)["state"] == "closed"
    half_open_waiters = [r for r in deliveries(engine) if "half-open" in (r.reason or "")]
    assert len(half_open_waiters) == 7

    clock.advance(seconds=settings.breaker_probe_wait_seconds)
    await runtime.dispatch_tick()
    assert {r.status for r in deliveries(engine)} == {"sent"}
    assert len(mock_sends(engine)) == 8


async def test_the_breaker_counts_failed_calls_not_recipients(engine, clock, settings):
    """One failed call carrying ten messages is one failure of the channel: with a
    threshold of 3 the breaker stays closed; two more failed calls open it."""
    clock.set(T0)
    with session_scope(engine) as session:
        session.add(
            ChannelPolicy(instance="mock", breaker_threshold=3, breaker_cooldown_seconds=60)
        )
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(10)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    runtime = SchedulerRuntime(engine, clock, settings.model_copy(update={"dispatch_pipeline": 1}))
    mock = runtime.channels.get("mock")
    mock.config.fail_mode = "retryable"

    await runtime.dispatch_tick()  # one call, ten messages
    assert mock.calls == 1
    assert state(engine)["state"] == "closed"
    assert state(engine)["consecutive_failures"] == 1

    for _ in range(2):  # the ten retries come due together: two more failed calls
        clock.advance(seconds=3600)
        await runtime.dispatch_tick()
    assert state(engine)["state"] == "open"


async def test_breaker_past_the_grace_period_records_missed_with_the_reason(engine, clock, runtime):
    clock.set(T0)
    CircuitBreakers(engine, "op").trip("mock", T0, T0 + timedelta(days=1), "maintenance window")
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1h"}]
    )
    template_id = publish(engine, spec, T0)
    contact = add_contact(engine, "wm_1", "甲", T0)
    enroll(engine, template_id, [(contact, T0)], T0)
    await runtime.dispatch_tick()
    (row,) = deliveries(engine)
    assert row.status == "missed"
    assert row.reason.startswith("not sent within its grace period: channel 'mock' paused")
    assert "maintenance window" in row.reason


@pytest.mark.parametrize("connection_lost", [True, False], ids=["connection-lost", "other-error"])
async def test_a_failed_breaker_update_does_not_lose_what_was_sent(
    engine, clock, runtime, connection_lost
):
    """The breaker is fed after the channel call: when that write fails the
    messages are out all the same, and must be recorded sent (not left in
    ``sending`` for the reaper to call unknown)."""
    clock.set(T0)
    breakers = runtime.dispatcher.breakers
    # One earlier failure: the next call's results are written to the breaker.
    breakers.record("mock", successes=0, failures=1, error="HTTP 503", now=T0, config=CONFIG)
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(2)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    record = breakers.record
    tries = []

    def drops_the_first_write(*args, **kwargs):
        tries.append(args)
        if len(tries) == 1:
            raise DBAPIError(
                "UPDATE channel_breakers",
                None,
                OSError("server closed the connection unexpectedly"),
                connection_invalidated=connection_lost,
            )
        return record(*args, **kwargs)

    breakers.record = drops_the_first_write  # type: ignore[method-assign]
    await runtime.dispatch_tick()

    assert {r.status for r in deliveries(engine)} == {"sent"}
    assert len(mock_sends(engine)) == 2
    # A lost connection is tried again on a new one; any other error costs only
    # this one breaker update.
    assert len(tries) == (2 if connection_lost else 1)
    assert state(engine)["consecutive_failures"] == (0 if connection_lost else 1)


@pytest.fixture
def client(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        from api.users import service as users_service

        with session_scope(engine) as session:
            admin = users_service.create_user(
                session, "admin", "a-long-test-password", ["admin"], T0
            )
            token = users_service.create_token(session, admin.id, "tests", T0)
        c.headers["Authorization"] = f"Bearer {token.secret}"
        yield c


def test_api_shows_the_breaker_and_lets_an_operator_pause_and_reset(client, clock):
    clock.set(T0)
    assert client.get("/api/channels/mock/breaker").json()["state"] == "closed"
    opened = client.post(
        "/api/channels/mock/breaker/open", json={"minutes": 30, "reason": "WeCom outage"}
    ).json()
    assert opened["state"] == "open"
    assert opened["last_error"] == "WeCom outage"
    assert opened["open_until"].startswith("2027-03-01T02:30:00")
    listed = {c["name"]: c for c in client.get("/api/channels").json()}
    assert listed["mock"]["breaker"]["state"] == "open"
    assert client.post("/api/channels/mock/breaker/reset").json()["state"] == "closed"
    assert client.get("/api/channels/nope/breaker").status_code == 404


async def test_max_attempts_is_set_per_channel(engine, clock, runtime):
    clock.set(T0)
    with session_scope(engine) as session:
        session.add(ChannelPolicy(instance="mock", max_attempts=2, breaker_threshold=100))
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contact = add_contact(engine, "wm_1", "甲", T0)
    enroll(engine, template_id, [(contact, T0)], T0)
    runtime.channels.get("mock").config.fail_mode = "retryable"
    for _ in range(2):
        await runtime.dispatch_tick()
        clock.advance(hours=1)
    (row,) = deliveries(engine)
    assert (row.status, row.attempts) == ("failed", 2)  # the workspace default is 5
    assert row.reason.startswith("gave up after 2 attempts: mock: simulated temporary error")
