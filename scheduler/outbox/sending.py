"""Sending: one adapter call at a time under the concurrency limit, its rows
marked ``sending`` just before it, and what the call says about the channel
(breaker, task mode)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from channels import service as channels_service
from channels.base import ChannelAdapter, OutboundMessage, ResultStatus, SendResult, task_poller
from channels.breaker import BreakerConfig, CircuitBreakers
from channels.registry import ChannelPool
from scheduler.outbox import tasks
from scheduler.outbox.leases import Pace
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.recording import through_outage
from scheduler.outbox.transitions import Outcome
from sopbot.clock import Clock
from sopbot.settings import Settings

log = logging.getLogger("sopbot.dispatch")

S = DeliveryStatus


def call_size(adapter: ChannelAdapter, calls_in_flight: int) -> int:
    """Messages per adapter call. An adapter that sends one request per message
    and bounds its requests in flight itself (``config.max_concurrency``: the
    webhook, apprise) would otherwise take a whole batch of 200 in one call and
    hold most of it ``sending`` while it waits its turn inside the adapter; its
    calls are cut so that the dispatcher's ``calls_in_flight`` together fill its
    own bound once, and no row is marked long before its request starts."""
    size = max(1, adapter.capabilities.max_batch)
    fan_out = getattr(getattr(adapter, "config", None), "max_concurrency", None)
    if isinstance(fan_out, int) and fan_out > 0:
        size = min(size, max(1, -(-fan_out // max(1, calls_in_flight))))
    return size


class SendingMarks:
    """Marks rows ``sending`` just before their call, coalescing the calls that
    start together into one transaction (``flush`` returns the ids it marked)."""

    def __init__(self, flush: Callable[[list[int]], Awaitable[set[int]]]) -> None:
        self._flush = flush
        self._waiting: list[int] = []
        self._marked: dict[int, bool] = {}
        self._lock = asyncio.Lock()

    async def mark(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        self._waiting.extend(ids)
        async with self._lock:
            if ids[0] not in self._marked:  # no earlier flush took ours along
                take, self._waiting = self._waiting, []
                try:
                    marked = await self._flush(take)
                except BaseException:
                    for i in take:
                        self._marked[i] = False
                    raise
                for i in take:
                    self._marked[i] = i in marked
        return {i for i in ids if self._marked.pop(i, False)}


class ChannelCalls:
    """The dispatcher's sending half (mixed into ``Dispatcher``)."""

    clock: Clock
    channels: ChannelPool
    settings: Settings
    breakers: CircuitBreakers
    pace: Pace
    _stopping: bool
    _sleep: Callable[[float], None]
    _channel_policies: dict[str, channels_service.EffectivePolicy]
    _breaker_seen: dict[str, dict[str, Any]]

    async def _send_recorded(
        self,
        channel: str,
        adapter: ChannelAdapter,
        batch: list[OutboundMessage],
        limit: asyncio.Semaphore,
        marks: SendingMarks,
        ahead: asyncio.Semaphore,
        unsent: list[int],
    ) -> dict[int, Outcome]:
        """One adapter call under the concurrency limit; its results feed the
        breaker. Its rows are marked ``sending`` when it is next in line (at
        most one call waiting per slot, so marking overlaps the calls in
        flight); rows further back stay ``claimed``. A stop before the call
        starts gives its rows back (``unsent``)."""
        async with ahead:
            if self._stopping:
                return {}  # still claimed: released by the caller
            allowed = await marks.mark([m.delivery_id for m in batch])
            batch = [m for m in batch if m.delivery_id in allowed]
            if not batch:
                return {}
            async with limit:
                if self._stopping:  # marked, never handed over
                    unsent.extend(m.delivery_id for m in batch)
                    return {}
                started = time.perf_counter()
                results = await self._send(adapter, batch)
                self.pace.observe(time.perf_counter() - started, len(batch))
        # The breaker counts calls, not messages: one failed mass send of 10,000
        # contacts is one failure of the channel, and a call that delivered
        # anything shows the channel works (a few bad recipients do not trip it).
        sent_any = any(o.status == S.SENT for o in results.values())
        failed = [o for o in results.values() if o.status in ("retry", S.UNKNOWN)]
        if sent_any:
            failed = []
        successes = 1 if sent_any else 0
        seen = self._breaker_seen.get(channel, {})
        healthy = seen.get("state", "closed") == "closed" and not seen.get("consecutive_failures")
        if failed or not healthy:  # a healthy channel costs no write
            policy = self._channel_policies.get(channel) or channels_service.effective_policy(
                None, self.settings
            )
            state = await asyncio.to_thread(
                self._record_breaker,
                channel,
                successes=successes,
                failures=1 if failed else 0,
                error=failed[0].reason if failed else None,
                config=policy.breaker,
            )
            if state is not None:
                if state != "closed":
                    log.warning("channel %s circuit breaker is %s", channel, state)
                self._breaker_seen[channel] = {
                    "state": state,
                    "consecutive_failures": 1 if failed else 0,
                }
        return results

    def _record_breaker(
        self,
        channel: str,
        *,
        successes: int,
        failures: int,
        error: str | None,
        config: BreakerConfig,
    ) -> str | None:
        """Feed one call's results to the channel's breaker; its state afterwards,
        or None when that could not be written.

        The messages are already out: the batch must still reach :meth:`_finish`,
        or its sent deliveries would end ``unknown``. So a dropped database
        connection is retried on a new one, and any other failure here costs
        only this one breaker update (the next call's results feed it again)."""
        try:
            return through_outage(
                lambda: self.breakers.record(
                    channel,
                    successes=successes,
                    failures=failures,
                    error=error,
                    now=self.clock.now(),
                    config=config,
                ),
                what=f"updating channel {channel}'s circuit breaker",
                seconds=1.5,
                sleep=self._sleep,
                # bookkeeping: only a dropped connection is worth a wait here
                retry_if=lambda exc: isinstance(exc, DBAPIError) and exc.connection_invalidated,
            )
        except Exception:  # noqa: BLE001 - bookkeeping must not lose the batch
            log.exception("could not update channel %s's circuit breaker", channel)
            return None

    def _note_modes(
        self,
        by_id: dict[int, Any],
        messages: dict[int, OutboundMessage],
        results: dict[int, Outcome],
        adapters: dict[str, ChannelAdapter],
    ) -> dict[tuple[str, str, str], list[int]]:
        """Say in the log what ``sent`` means for task and remind modes; return the
        mass-send tasks created, to be polled (``scheduler.outbox.tasks``)."""
        created: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for delivery_id, outcome in results.items():
            message = messages[delivery_id]
            if outcome.status != S.SENT or message.mode == "send":
                continue
            account = message.account_external_id or "?"
            if message.mode == "remind":
                outcome.reason = f"reminder sent to staff account {account}; they send it by hand"
                continue
            channel = by_id[delivery_id].channel
            polls = channel in adapters and task_poller(adapters[channel]) is not None
            if outcome.provider_message_id and polls:
                outcome.reason = tasks.awaiting_reason(outcome.provider_message_id, account)
                created[(channel, outcome.provider_message_id, account)].append(delivery_id)
        return created

    async def _send(
        self, adapter: ChannelAdapter, batch: list[OutboundMessage]
    ) -> dict[int, Outcome]:
        try:
            results = await adapter.send(batch)
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the batch
            log.exception("channel %s raised while sending", adapter.name)
            reason = f"channel {adapter.name} raised {type(exc).__name__}: {exc}; outcome unknown, not resent"
            return {m.delivery_id: Outcome(S.UNKNOWN, reason) for m in batch}
        if len(results) != len(batch):
            reason = (
                f"channel {adapter.name} returned {len(results)} results for {len(batch)} messages"
            )
            return {m.delivery_id: Outcome(S.UNKNOWN, reason) for m in batch}
        return {m.delivery_id: to_outcome(r) for m, r in zip(batch, results, strict=True)}


def to_outcome(result: SendResult) -> Outcome:
    if result.status == ResultStatus.SENT:
        return Outcome(S.SENT, None, result.provider_message_id, sent=True)
    if result.status == ResultStatus.RETRYABLE:
        return Outcome(
            "retry", result.error or "temporary channel error", retry_after=result.retry_after
        )
    return Outcome(S.FAILED, result.error or "permanent channel error")
