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


class SendingWaves:
    """Marks rows ``sending`` a wave of calls at a time: the calls that start in
    the next ``wave`` releases of the concurrency limit are marked in one
    transaction (``flush`` returns the ids it marked), and the wave after is
    marked in the background as soon as the calls of the previous one start.
    So at most two waves of calls are marked and not yet started; rows further
    back stay ``claimed``, and a stop gives the marked ones back.

    ``calls`` are the ids of each adapter call, in the order the calls start
    (they queue on the limit in that order)."""

    def __init__(
        self,
        calls: Sequence[Sequence[int]],
        wave: int,
        flush: Callable[[list[int]], Awaitable[set[int]]],
    ) -> None:
        self._calls = [list(c) for c in calls]
        self._wave = max(1, wave)
        self._flush = flush
        self._requested = 0  # calls [0, _requested) have a wave marking them
        self._waves: list[asyncio.Task[set[int]]] = []
        self._wave_of: dict[int, asyncio.Task[set[int]]] = {}  # call -> its wave
        self.started: set[int] = set()  # calls handed to their adapter

    def _request(self, upto: int) -> None:
        """Mark the next wave (at least up to call ``upto``), in one transaction."""
        if self._requested >= len(self._calls):
            return
        end = min(len(self._calls), max(upto + 1, self._requested + self._wave))
        ids = [i for call in self._calls[self._requested : end] for i in call]
        task = asyncio.ensure_future(self._flush(ids))
        for k in range(self._requested, end):
            self._wave_of[k] = task
        self._waves.append(task)
        self._requested = end

    async def mark(self, call: int) -> set[int]:
        """Wait until call ``call``'s rows are marked (its turn has come); the
        ids this worker still held and so may send. Starts marking the next
        wave when fewer than a wave of marked calls is left in line."""
        if call >= self._requested:
            self._request(call)
        marked = await asyncio.shield(self._wave_of[call])
        if self._requested - (call + 1) < self._wave:
            self._request(self._requested)
        return {i for i in self._calls[call] if i in marked}

    def marked(self, call: int) -> set[int] | None:
        """Call ``call``'s marked ids if its wave was marked; None when it was
        never marked (or its wave failed: then nothing of it was marked)."""
        wave = self._wave_of.get(call)
        if wave is None or not wave.done() or wave.cancelled() or wave.exception() is not None:
            return None
        marked = wave.result()
        return {i for i in self._calls[call] if i in marked}

    async def settled(self) -> None:
        """Wait for every wave still being marked (a stop or cancel must know
        which rows it holds as ``sending``)."""
        pending = [w for w in self._waves if not w.done()]
        if pending:
            await asyncio.wait(pending)


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
        waves: SendingWaves,
        call: int,
        unsent: list[int],
    ) -> dict[int, Outcome]:
        """One adapter call under the concurrency limit; its results feed the
        breaker. Its rows are marked ``sending`` with its wave (``waves``), so
        marking overlaps the calls in flight; rows further back stay
        ``claimed``. A stop before the call starts gives its marked rows back
        (``unsent``); rows of a wave never marked are released by the caller."""
        async with limit:
            if self._stopping:  # a marked wave is given back by the caller
                return {}
            allowed = await waves.mark(call)
            batch = [m for m in batch if m.delivery_id in allowed]
            if not batch or self._stopping:  # marked, never handed over
                return {}
            waves.started.add(call)
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
                note = outcome.reason  # e.g. why a welcome became a mass-send task
                outcome.reason = tasks.awaiting_reason(outcome.provider_message_id, account)
                if note:
                    outcome.reason = f"{note}; {outcome.reason}"
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
        return Outcome(S.SENT, result.note, result.provider_message_id, sent=True)
    if result.status == ResultStatus.SKIPPED:
        return Outcome(S.SKIPPED, result.error or "skipped by the channel")
    if result.status == ResultStatus.RETRYABLE:
        return Outcome(
            "retry", result.error or "temporary channel error", retry_after=result.retry_after
        )
    return Outcome(S.FAILED, result.error or "permanent channel error")
