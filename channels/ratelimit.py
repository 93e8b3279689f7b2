"""Per-channel-instance rate limits: a token bucket shared by every worker.

The bucket lives in the database (``channel_rate_buckets``, one row per channel
instance, updated under the row lock / SQLite's write lock) or, when
``SOPBOT_REDIS_URL`` is set, in Redis (one hash per instance, updated by a Lua
script so the read-refill-take is atomic). Both take "now" from the caller's
clock, so tests drive refills with a ``ManualClock`` instead of sleeping.

The dispatcher asks for as many tokens as it has messages for a channel; what is
not granted is put back to ``scheduled`` with a ``run_at`` spread over the time
the bucket needs to refill (:meth:`Grant.delay_for`), never sent early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine

from channels.base import ChannelError
from channels.models import ChannelRateBucket
from sopbot.db import session_scope
from sopbot.settings import Settings
from sopbot.sql import insert_of

BUCKETS = ChannelRateBucket.__table__  # type: ignore[attr-defined]

# Float tokens lose a hair on every refill; do not let 0.9999999 mean "none".
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    remaining: float  # tokens left in the bucket after this grant (< 1 when short)
    rate: float  # tokens per second

    def delay_for(self, index: int) -> float:
        """Seconds until the ``index``-th (0-based) message that was *not* granted
        would find a token, if nobody else took one meanwhile."""
        return max(0.0, (index + 1 - self.remaining) / self.rate)


def default_burst(rate: float) -> int:
    return max(1, math.ceil(rate))


def _refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - last) * rate)


class RateLimiter(Protocol):
    backend: str

    def acquire(self, key: str, want: int, rate: float, burst: int, now: datetime) -> Grant:
        """Take up to ``want`` tokens from ``key``'s bucket (``rate``/s, ``burst`` max)."""
        ...


class DatabaseRateLimiter:
    """Token buckets in ``channel_rate_buckets``; one short transaction per acquire."""

    backend = "database"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def acquire(self, key: str, want: int, rate: float, burst: int, now: datetime) -> Grant:
        if want <= 0:
            return Grant(0, float(burst), rate)
        with session_scope(self.engine, immediate=True) as session:
            session.execute(
                insert_of(session, BUCKETS)
                .values(instance=key, tokens=float(burst), updated_at=now)
                .on_conflict_do_nothing()
            )
            # a row lock on PostgreSQL; SQLite's write lock is the caller's BEGIN IMMEDIATE
            stmt = (
                select(BUCKETS.c.tokens, BUCKETS.c.updated_at)
                .where(BUCKETS.c.instance == key)
                .with_for_update()
            )
            tokens, updated_at = session.execute(stmt).one()
            last = updated_at.timestamp()
            current = _refill(tokens, last, now.timestamp(), rate, burst)
            granted = min(want, int(current + _EPSILON))
            left = max(0.0, current - granted)
            session.execute(
                BUCKETS.update()
                .where(BUCKETS.c.instance == key)
                .values(tokens=left, updated_at=max(now, updated_at))
            )
        return Grant(granted, left, rate)

    def reset(self, key: str) -> None:
        with session_scope(self.engine) as session:
            session.execute(BUCKETS.delete().where(BUCKETS.c.instance == key))


# KEYS[1] bucket; ARGV rate, burst, now (unix s), want, ttl (s)
_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local granted = math.min(want, math.floor(tokens + 1e-9))
tokens = math.max(0, tokens - granted)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {granted, tostring(tokens)}
"""


class RedisRateLimiter:
    """Token buckets in Redis (``{prefix}{instance}`` hashes, expiring when idle)."""

    backend = "redis"

    def __init__(self, client: Any, prefix: str = "sopbot:bucket:") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "sopbot:bucket:") -> RedisRateLimiter:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ChannelError(
                "SOPBOT_REDIS_URL is set but the redis client is not installed; "
                "pip install 'sopbot[redis]'"
            ) from exc
        return cls(redis.Redis.from_url(url, socket_timeout=5), prefix)

    def acquire(self, key: str, want: int, rate: float, burst: int, now: datetime) -> Grant:
        if want <= 0:
            return Grant(0, float(burst), rate)
        ttl = max(60, math.ceil(burst / rate) * 2)
        granted, tokens = self._script(
            keys=[self.prefix + key], args=[rate, burst, now.timestamp(), want, ttl]
        )
        return Grant(int(granted), float(tokens), rate)

    def reset(self, key: str) -> None:
        self.client.delete(self.prefix + key)


def build_limiter(engine: Engine, settings: Settings) -> RateLimiter:
    """Redis when ``settings.redis_url`` is set, else the database."""
    if settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url)
    return DatabaseRateLimiter(engine)
