"""Leases: a worker renews what it holds while its channel works, holds no
more than it can start within a lease, and reaps only leases nobody renewed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from channels.base import ChannelError
from channels.models import ChannelInstance
from channels.registry import adapter_class
from scheduler.outbox import transitions
from sopbot.clock import Clock
from sopbot.db import session_scope

log = logging.getLogger("sopbot.dispatch")


class Pace:
    """How fast this worker's channel calls go (a moving average), and so how
    many rows it may claim: no more than it can start within a third of a lease
    at its concurrency, so what it claims is sent long before anyone could
    reap it and a stop has little to give back."""

    def __init__(self, lease_seconds: float, concurrency: int) -> None:
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.call_seconds: float | None = None
        self.per_call = 1.0

    def observe(self, seconds: float, messages: int) -> None:
        if self.call_seconds is None:
            self.call_seconds, self.per_call = seconds, float(messages)
            return
        self.call_seconds = 0.8 * self.call_seconds + 0.2 * seconds
        self.per_call = 0.8 * self.per_call + 0.2 * messages

    # Before the first call is timed: a few rounds of the calls in flight, not a
    # whole batch (one worker taking 500 rows of a 2 s channel would hold them
    # for a minute while the other workers idle). One timed call corrects it.
    UNTIMED_ROUNDS = 8

    def claim_limit(self, batch_size: int) -> int:
        if self.call_seconds is None:
            return max(1, min(batch_size, self.UNTIMED_ROUNDS * self.concurrency))
        if not self.call_seconds:
            return batch_size
        calls = self.concurrency * (self.lease_seconds / 3) / self.call_seconds
        return max(1, min(batch_size, int(calls * max(1.0, self.per_call))))

    def ahead_limit(self, depth: int, most: int) -> int:
        """Rows it may claim ahead of the instant they fall due (at most
        ``most``): what ``depth`` batches' calls in flight start within a third
        of a lease; none before a call was timed (the channel may be slow)."""
        if self.call_seconds is None:
            return 0
        if not self.call_seconds:
            return most
        calls = depth * self.concurrency * (self.lease_seconds / 3) / self.call_seconds
        return min(most, int(calls * max(1.0, self.per_call)))


class LeaseKeeper:
    """Renews the lease of rows a worker holds, every ``lease / 3``, fenced by
    owner and status (rows already finished are not touched). A database error
    costs one renewal, not the batch: the next one tries again."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        owner: str,
        lease_seconds: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.sleep = sleep

    @property
    def interval(self) -> float:
        return self.lease.total_seconds() / 3

    def lease_until(self) -> datetime:
        return self.clock.now() + self.lease

    def renew(self, ids: Sequence[int]) -> int:
        """Renew now; the number of rows still held."""
        with session_scope(self.engine) as session:
            return transitions.renew(
                session, owner=self.owner, ids=ids, lease_until=self.lease_until()
            )

    async def keep(self, ids: Sequence[int]) -> None:
        """Renew ``ids`` until cancelled (run as a task beside the batch)."""
        while True:
            await self.sleep(self.interval)
            try:
                held = await asyncio.to_thread(self.renew, ids)
            except Exception as exc:  # noqa: BLE001 - try again next interval
                log.warning("could not renew the lease of %d deliveries: %s", len(ids), exc)
                continue
            if not held:
                return


def deduplicating_channels(session: Session, channels: set[str]) -> list[str]:
    """Those of ``channels`` whose adapter deduplicates on the delivery key."""
    return [c for c in sorted(channels) if _channel_is_idempotent(session, c)]


def _channel_is_idempotent(session: Session, channel: str) -> bool:
    instance = (
        session.exec(select(ChannelInstance).where(col(ChannelInstance.name) == channel))  # type: ignore[call-overload]
        .scalars()
        .first()
    )
    if instance is None:
        return False
    try:
        return adapter_class(instance.adapter).capabilities.idempotent
    except ChannelError:
        return False
