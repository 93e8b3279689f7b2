"""Token buckets per channel instance, shared by every worker (database or Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from channels.models import ChannelPolicy
from channels.ratelimit import (
    DatabaseRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    build_limiter,
)
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return client


@pytest.fixture(params=["database", "redis"])
def limiters(request, engine) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters on one shared store, as two workers would have."""
    if request.param == "database":
        yield DatabaseRateLimiter(engine), DatabaseRateLimiter(engine)
        return
    client = _redis_client()
    prefix = f"sopbot-test:{uuid.uuid4().hex}:"
    yield RedisRateLimiter(client, prefix), RedisRateLimiter(client, prefix)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)


def test_bucket_starts_full_refills_at_the_rate_and_caps_at_burst(limiters):
    limiter, _ = limiters
    first = limiter.acquire("wecom-a", 8, rate=2.0, burst=5, now=T0)
    assert (first.granted, first.remaining) == (5, 0.0)
    # The ungranted ones: next token in 0.5 s, then every 0.5 s.
    assert [first.delay_for(i) for i in range(3)] == [0.5, 1.0, 1.5]
    assert limiter.acquire("wecom-a", 8, 2.0, 5, T0 + timedelta(seconds=1)).granted == 2
    assert limiter.acquire("wecom-a", 1, 2.0, 5, T0 + timedelta(seconds=1)).granted == 0
    idle = limiter.acquire("wecom-a", 100, 2.0, 5, T0 + timedelta(hours=1))
    assert idle.granted == 5  # never more than the burst
    assert limiter.acquire("other", 3, 2.0, 5, T0).granted == 3  # buckets are per instance


def test_workers_share_one_bucket(limiters):
    worker_a, worker_b = limiters
    granted = 0
    for step in range(10):  # 10 s at 1/s, burst 3, both workers asking for 5 each second
        now = T0 + timedelta(seconds=step)
        granted += worker_a.acquire("hook", 5, 1.0, 3, now).granted
        granted += worker_b.acquire("hook", 5, 1.0, 3, now).granted
    assert granted == 3 + 9  # the burst, then one per second: never double


def test_build_limiter_picks_redis_when_configured(engine, settings):
    assert build_limiter(engine, settings).backend == "database"
    _redis_client()
    configured = settings.model_copy(update={"redis_url": REDIS_URL})
    assert build_limiter(engine, configured).backend == "redis"


async def test_dispatch_sends_what_the_bucket_allows_and_spreads_the_rest(engine, clock, runtime):
    clock.set(T0)
    with session_scope(engine) as session:
        session.add(ChannelPolicy(instance="mock", rate_per_second=2.0, burst=2))
    template_id = publish(engine, new_friend_spec(), T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(5)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)

    await runtime.dispatch_tick()
    welcome = [r for r in deliveries(engine) if r.due_at == T0]
    sent = [r for r in welcome if r.status == "sent"]
    waiting = sorted((r for r in welcome if r.status == "scheduled"), key=lambda r: r.run_at)
    assert len(sent) == 2 and len(mock_sends(engine)) == 2
    assert [r.run_at - T0 for r in waiting] == [timedelta(seconds=s) for s in (0.5, 1.0, 1.5)]
    assert all(r.attempts == 0 for r in waiting)  # waiting for a token is not an attempt
    assert waiting[0].reason == "rate limit: channel 'mock' sends at most 2/s; waiting for its turn"

    for expected in (3, 4, 5):  # one token every 0.5 s, one waiting delivery each time
        clock.advance(seconds=0.5)
        await runtime.dispatch_tick()
        assert len(mock_sends(engine)) == expected
