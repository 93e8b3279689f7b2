"""Dispatch: claim due deliveries, hand them to channels, record the outcome.
Every status change is a transition of ``scheduler.outbox.transitions``; this
module decides the order:

1. claim a batch, no larger than this worker can start within a lease
   (``leases.Pace``), and renew its lease while it is in hand
   (``leases.LeaseKeeper``);
2. prepare it: render, and settle what cannot or may not go now
   (``preparing``);
3. per adapter call, mark its rows ``sending`` just before the call and send
   (``sending``); rows still waiting their turn stay ``claimed``;
4. record the outcomes, waiting out a database outage (``recording``).

A stop stops claiming and starting calls; what was not handed over goes back
to ``scheduled`` at once (``release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from channels import service as channels_service
from channels.base import ChannelAdapter, ChannelError, OutboundMessage
from channels.breaker import CircuitBreakers
from channels.ratelimit import build_limiter
from channels.registry import ChannelPool
from scheduler.outbox import leases, policies, transitions, wecom_quota
from scheduler.outbox.material_links import MaterialSigner
from scheduler.outbox.models import GATHERED_MODES, DeliveryStatus
from scheduler.outbox.preparing import (
    BatchPreparation,
    CapCheck,
    PreparedTouchpoint,
    capability_problem,
)
from scheduler.outbox.recording import ERROR_KINDS, OutcomeRecording, log_batch
from scheduler.outbox.repository import DELIVERIES
from scheduler.outbox.sending import ChannelCalls, SendingWaves, call_size
from scheduler.outbox.service import held_template_ids
from scheduler.outbox.transitions import Outcome
from scheduler.staff import service as staff_service
from sopbot.clock import Clock
from sopbot.db import reader, session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.dispatch")

S = DeliveryStatus

# Kept for callers that check a touchpoint against a channel (flows.authoring).
_capability_problem = capability_problem


@dataclass
class DispatchStats:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    # For metrics (scheduler.operations.metrics): seconds from claim to recorded outcome per
    # batch, sent - due per sent delivery, channel errors by (channel, kind).
    batch_seconds: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    channel_errors: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, other: DispatchStats) -> None:
        self.claimed += other.claimed
        self.outcomes.update(other.outcomes)
        self.batches += other.batches
        self.batch_seconds.extend(other.batch_seconds)
        self.lateness.extend(other.lateness)
        self.channel_errors.update(other.channel_errors)

    @property
    def sent(self) -> int:
        return self.outcomes[S.SENT]


class Dispatcher(BatchPreparation, ChannelCalls, OutcomeRecording):
    """Claims and sends due deliveries. Safe to run in any number of processes:
    all coordination happens in the database."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        channels: ChannelPool,
        settings: Settings,
        worker_id: str,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.channels = channels
        self.settings = settings
        self.worker_id = worker_id
        self.rng = rng or random.Random()
        self._touchpoints: dict[int, PreparedTouchpoint] = {}
        self._stopping = False
        self._stop_by: float | None = None
        self._sleep = time.sleep  # outage backoff (tests pass their own)
        self._monotonic = time.monotonic
        # Delivery policies (scheduler.outbox.policies), channel controls (channels.*).
        self.workspace = policies.WorkspaceDefaults.from_settings(settings)
        self.limiter = build_limiter(engine, settings)
        self.breakers = CircuitBreakers(
            engine,
            worker_id,
            probe_wait=timedelta(seconds=settings.breaker_probe_wait_seconds),
            probe_lease=timedelta(seconds=settings.lease_seconds),
        )
        self.leases = leases.LeaseKeeper(engine, clock, worker_id, settings.lease_seconds)
        self.pace = leases.Pace(settings.lease_seconds, settings.send_concurrency)
        self._template_policies: dict[int, policies.TemplatePolicy] = {}  # by version id
        self._channel_policies: dict[str, channels_service.EffectivePolicy] = {}
        self._breaker_seen: dict[str, dict[str, Any]] = {}
        self._cap_checks: dict[int, CapCheck] = {}
        self._quota_checks: dict[int, wecom_quota.QuotaCheck] = {}
        self._sign_materials = MaterialSigner(engine, settings)

    def use_workspace(self, settings: Settings) -> None:
        """New workspace defaults (quiet hours, cap): policies worked out from the
        old ones are forgotten."""
        self.workspace = policies.WorkspaceDefaults.from_settings(settings)
        self._template_policies = {}

    # -- the tick ---------------------------------------------------------------

    async def run_once(self, max_batches: int | None = None) -> DispatchStats:
        """Drain due deliveries: claim a batch, send it, repeat until none is due
        (or ``max_batches``). Returns what happened.

        Up to ``dispatch_pipeline`` batches are in progress at once: the next
        batch is claimed and rendered while the previous one waits on its
        channel. Each batch is fenced by its own lease exactly as batches of two
        workers are, so this changes nothing about exactly-once. Cancelling it
        (a stop past its bound) cancels the calls in flight; what they and the
        finished calls returned is still recorded.
        """
        total = DispatchStats()
        limit = max_batches or self.settings.max_batches_per_tick
        depth = self.pipeline_depth
        # One bound on adapter calls in flight for the batches in progress, not
        # one per batch: while one batch is between its calls (recording,
        # claiming, rendering) or down to its last few, the other fills the slots.
        bound = self._call_bound()
        running: set[asyncio.Task[DispatchStats]] = set()
        claimed, drained = 0, False
        try:
            while True:
                while not drained and not self._stopping and claimed < limit:
                    if len(running) >= depth:
                        break
                    # Expiring overdue rows scans every due row, so once per tick
                    # is enough; doing it per batch made draining a backlog quadratic.
                    size = self.pace.claim_limit(self.settings.claim_batch_size)
                    if claimed < depth - 1:
                        # The first batches are smaller, staggered: batches of one
                        # size started together also end together, and then every
                        # batch is between its calls (recording, claiming,
                        # preparing) at once and none is sending.
                        size = max(1, size * (claimed + 1) // depth)
                    rows = await asyncio.to_thread(self.claim, size, expire=claimed == 0)
                    if not rows:
                        drained = True
                        break
                    claimed += 1
                    running.add(asyncio.create_task(self._timed_process(rows, None, bound)))
                if not running:
                    break
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    total.add(task.result())
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            raise
        finally:
            await _finish(running, total)
        return total

    async def run_ahead(self, due: datetime, max_batches: int | None = None) -> DispatchStats:
        """Rows due at ``due``, a little ahead (a fixed-time send to many): claim
        and render them now, hand them to their channel at ``due``, never before.

        A burst due at one instant then costs only marking, sending and
        recording after that instant. The batches are claimed, fenced and
        leased exactly as :meth:`run_once`'s (their leases renewed while they
        wait); policies are decided as of ``due``; a stop while they wait gives
        them back. Their channel calls share one bound, that of a pipeline.

        It takes no more than the worker can start within a third of a lease
        (``leases.Pace.ahead_limit``), and nothing before it has timed a call:
        one worker must not hoard a burst of a slow channel the others could
        help send."""
        total = DispatchStats()
        limit = max_batches or self.settings.max_batches_per_tick
        room = self.pace.ahead_limit(self.pipeline_depth, self.settings.claim_batch_size * limit)
        bound = self._call_bound()
        running: set[asyncio.Task[DispatchStats]] = set()
        try:
            while room > 0 and not self._stopping and self.clock.now() < due:
                size = min(room, self.pace.claim_limit(self.settings.claim_batch_size))
                rows = await asyncio.to_thread(self.claim, size, expire=False, upto=due)
                if not rows:
                    break
                room -= len(rows)
                running.add(asyncio.create_task(self._timed_process(rows, due, bound)))
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            raise
        finally:
            await _finish(running, total)
        return total

    def _call_bound(self) -> asyncio.Semaphore:
        """The adapter calls in flight that the batches in progress share: one
        fills the slots another leaves while it records, claims and renders."""
        return asyncio.Semaphore(self.settings.send_concurrency * self.pipeline_depth)

    async def _timed_process(
        self,
        rows: Sequence[Any],
        send_at: datetime | None = None,
        bound: asyncio.Semaphore | None = None,
    ) -> DispatchStats:
        started = time.perf_counter()
        batch = await self.process(rows, send_at, bound)
        batch.batch_seconds.append(time.perf_counter() - started)
        return batch

    def next_run_at(self, after: datetime, before: datetime) -> datetime | None:
        """The earliest ``run_at`` of a scheduled row in ``(after, before)``, if
        any: when the next tick would be late for it, the dispatch job wakes at
        that instant instead (a burst due in the same second goes out at once,
        not up to a tick later). A read on its own snapshot: never waits on the
        write lock."""
        d = DELIVERIES.c
        with reader(self.engine).connect() as conn:
            found = conn.execute(
                select(func.min(d.run_at)).where(
                    d.status == S.SCHEDULED, d.run_at > after, d.run_at < before
                )
            ).scalar_one()
        return cast(datetime | None, found)

    @property
    def pipeline_depth(self) -> int:
        return max(1, self.settings.dispatch_pipeline)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, within: float | None = None) -> None:
        """Stop claiming and starting calls (graceful shutdown); outcome writes
        then wait out a database outage only until ``within`` seconds from now."""
        self._stopping = True
        if within is not None:
            self._stop_by = self._monotonic() + within

    # -- claim, lease ---------------------------------------------------------------

    def claim(self, limit: int, *, expire: bool = True, upto: datetime | None = None) -> list[Any]:
        """Claim up to ``limit`` rows due by ``upto`` (default now; after marking
        overdue ones missed), and the due siblings of their task/moment rows
        (:meth:`_gather`)."""
        now = self.clock.now()
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)
        now = max(now, upto) if upto is not None else now
        with session_scope(self.engine, immediate=True) as session:
            held = held_template_ids(session)
            if expire:
                transitions.miss_overdue(session, now=now, held_templates=held)
            rows = transitions.claim(
                session,
                now=now,
                owner=self.worker_id,
                lease_until=lease_until,
                limit=limit,
                held_templates=held,
            )
            return rows + self._gather(session, rows, now, lease_until, held)

    def _gather(
        self,
        session: Any,
        rows: Sequence[Any],
        now: datetime,
        lease_until: datetime,
        held: list[int],
    ) -> list[Any]:
        """A WeCom mass-send task takes up to 10,000 customers (2,000 groups) and
        a moment is one per touchpoint: rows of one touchpoint occurrence in
        ``task``/``moment`` mode go out in one batch, as many as the channel
        takes in one call, instead of one job per claim batch."""
        claimed: Counter[tuple[int, int, str]] = Counter(
            (r.touchpoint_id, r.occurrence, r.channel) for r in rows if r.mode in GATHERED_MODES
        )
        more: list[Any] = []
        for (touchpoint_id, occurrence, channel), count in claimed.items():
            try:
                room = self.channels.get(channel).capabilities.max_batch - count
            except ChannelError:  # disabled: preparing the batch says so
                continue
            if room > 0:
                more += transitions.claim_siblings(
                    session,
                    now=now,
                    owner=self.worker_id,
                    lease_until=lease_until,
                    touchpoint_id=touchpoint_id,
                    occurrence=occurrence,
                    limit=room,
                    held_templates=held,
                )
        return more

    def reap_expired_leases(self) -> dict[str, int]:
        """Leases nobody renewed: claimed rows go back to scheduled (nothing was
        sent); sending rows become unknown — unless their channel deduplicates
        on the delivery key, then they are sent again."""
        now = self.clock.now()
        with session_scope(self.engine, immediate=True) as session:
            channels = transitions.expired_sending_channels(session, now)
            return transitions.reap(
                session, now=now, deduplicating=leases.deduplicating_channels(session, channels)
            )

    def _give_back(self, claimed: Sequence[int], marked: Sequence[int]) -> int:
        """Rows of a stopped batch never handed to a channel back to scheduled."""
        with session_scope(self.engine) as session:
            count = transitions.release(session, owner=self.worker_id, ids=claimed)
            return count + transitions.unmark(session, owner=self.worker_id, ids=marked)

    def release_claims(self, ids: Sequence[int] | None = None) -> int:
        """Give back what this worker claimed but has not handed to a channel."""
        with session_scope(self.engine) as session:
            return transitions.release(session, owner=self.worker_id, ids=ids)

    # -- one batch --------------------------------------------------------------------

    async def process(
        self,
        rows: Sequence[Any],
        send_at: datetime | None = None,
        bound: asyncio.Semaphore | None = None,
    ) -> DispatchStats:
        """One claimed batch: prepare, send, record. With ``send_at`` (rows
        claimed ahead) nothing is handed to a channel before that instant;
        ``bound``: the adapter calls in flight, when shared with other batches."""
        ids = [r.id for r in rows]
        keeper = asyncio.create_task(self.leases.keep(ids))
        try:
            return await self._process(rows, send_at, bound)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _wait_until(self, instant: datetime) -> bool:
        """Sleep until ``instant`` on the dispatcher's clock; False when a stop
        came first, or the clock does not move (frozen time: never send early)."""
        step = 0.05
        rounds = int(max(0.0, (instant - self.clock.now()).total_seconds()) / step) + 20
        for _ in range(rounds):
            if self._stopping:
                return False
            left = (instant - self.clock.now()).total_seconds()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, step))
        return False

    async def _process(
        self,
        rows: Sequence[Any],
        send_at: datetime | None = None,
        bound: asyncio.Semaphore | None = None,
    ) -> DispatchStats:
        stats = DispatchStats(claimed=len(rows), batches=1)
        messages, outcomes = await asyncio.to_thread(self._prepare, rows, send_at)
        by_id = {r.id: r for r in rows}
        adapters: dict[str, ChannelAdapter] = {}
        for channel_name in {by_id[i].channel for i in messages}:
            try:
                adapters[channel_name] = self.channels.get(channel_name)
            except ChannelError as exc:  # disabled by another process since _prepare
                for delivery_id in [i for i in messages if by_id[i].channel == channel_name]:
                    del messages[delivery_id]
                    outcomes[delivery_id] = Outcome(S.FAILED, str(exc))
        if outcomes:
            await asyncio.to_thread(self._mark_sending, [], outcomes)
        if send_at is not None and messages and not await self._wait_until(send_at):
            # a stop came while they waited for their instant: never handed over
            for delivery_id in messages:
                self._cap_checks.pop(delivery_id, None)
                self._quota_checks.pop(delivery_id, None)
            released = await asyncio.to_thread(self._give_back, list(messages), [])
            stats.outcomes["released"] += released
            for outcome in outcomes.values():
                stats.outcomes[outcome.status] += 1
            return stats
        marked: set[int] = set()

        async def flush(chunk: list[int]) -> set[int]:
            capped: dict[int, Outcome] = {}
            allowed = await asyncio.to_thread(self._mark_sending, chunk, capped)
            outcomes.update(capped)
            marked.update(chunk)
            return allowed

        # Send per channel, in the adapter's batch size, concurrently.
        groups: dict[str, list[OutboundMessage]] = defaultdict(list)
        for delivery_id, message in messages.items():
            groups[by_id[delivery_id].channel].append(message)
        parts: list[tuple[str, ChannelAdapter, list[OutboundMessage]]] = []
        for channel_name, batch in groups.items():
            adapter = adapters[channel_name]
            size = call_size(adapter, self.settings.send_concurrency * self.pipeline_depth)
            for start in range(0, len(batch), size):
                parts.append((channel_name, adapter, batch[start : start + size]))
        # Bounded: at most send_concurrency adapter calls in flight per batch;
        # their rows are marked a wave of send_concurrency calls at a time, at
        # most two waves ahead of the calls that started.
        limit = bound or asyncio.Semaphore(self.settings.send_concurrency)
        waves = SendingWaves(
            [[m.delivery_id for m in part] for _, _, part in parts],
            self.settings.send_concurrency,
            flush,
        )
        handed_back: list[int] = []
        calls = [
            asyncio.ensure_future(
                self._send_recorded(channel_name, adapter, part, limit, waves, k, handed_back)
            )
            for k, (channel_name, adapter, part) in enumerate(parts)
        ]
        results: dict[int, Outcome] = {}
        try:
            if calls:
                await asyncio.wait(calls)
        except asyncio.CancelledError:
            for call in calls:
                call.cancel()
            if calls:
                await asyncio.wait(calls)
            raise
        finally:
            # Rows marked with a wave whose call never started (a stop, or a
            # cancel at the bound) were not handed over: they go back too.
            await waves.settled()
            given = set(handed_back)
            for k in range(len(parts)):
                if k not in waves.started:
                    handed_back.extend((waves.marked(k) or set()) - given)
            for call in calls:
                if not call.done() or call.cancelled():
                    continue
                if call.exception() is not None:  # its rows could not be marked
                    log.warning("a channel call was not started: %s", call.exception())
                    continue
                results.update(call.result())
            self._complete(by_id, messages, results, stats)
            # What was finished is recorded even when the batch is cancelled.
            created = self._note_modes(by_id, messages, results, adapters)
            await asyncio.to_thread(self._finish, results, created)
            unsent = [i for i in messages if i not in marked and i not in outcomes]
            if unsent or handed_back:  # a stop came before their turn: give them back now
                released = await asyncio.to_thread(self._give_back, unsent, handed_back)
                stats.outcomes["released"] += released
        finished_at = self.clock.now()
        for delivery_id, outcome in results.items():
            if outcome.sent:
                stats.lateness.append((finished_at - by_id[delivery_id].due_at).total_seconds())
        for outcome in list(outcomes.values()) + list(results.values()):
            stats.outcomes[outcome.status] += 1
        lost = [
            i for i in marked if i not in results and i not in outcomes and i not in handed_back
        ]
        if lost:
            stats.outcomes["lease_lost"] += len(lost)
        log_batch(self.worker_id, rows, outcomes, results, lost)
        return stats

    def _complete(
        self,
        by_id: dict[int, Any],
        messages: dict[int, OutboundMessage],
        results: dict[int, Outcome],
        stats: DispatchStats,
    ) -> None:
        """Count channel errors, keep what was rendered, turn retries into a
        later run (or a failure past the attempts/grace period)."""
        for delivery_id, outcome in results.items():
            if outcome.status != S.SENT:
                kind = ERROR_KINDS.get(outcome.status, outcome.status)
                stats.channel_errors[(by_id[delivery_id].channel, kind)] += 1
            outcome.rendered = messages[delivery_id].parts
            if outcome.status == "retry":
                outcome = self._retry_or_fail(by_id[delivery_id], outcome)
            results[delivery_id] = outcome

    def _mark_sending(self, ids: list[int], outcomes: dict[int, Outcome]) -> set[int]:
        """Fence: only rows still claimed by this worker move to ``sending``.
        Rows finished during preparation are recorded in the same transaction.

        Frequency caps are decided here, in the transaction that marks rows
        sending (targets locked on PostgreSQL, the write lock on SQLite), so two
        workers cannot both send a contact's one-per-day message. Capped rows
        get their outcome added to ``outcomes``."""
        now = self.clock.now()
        checks = {i: self._cap_checks.pop(i) for i in ids if i in self._cap_checks}
        quotas = {i: self._quota_checks.pop(i) for i in ids if i in self._quota_checks}
        with session_scope(self.engine) as session:
            if checks:
                capped = self._apply_caps(session, checks, now)
                outcomes.update(capped)
                ids = [i for i in ids if i not in capped]
            if quotas:  # WeCom's per-customer mass-send quota
                capped = wecom_quota.apply(
                    session, {i: q for i, q in quotas.items() if i in ids}, now
                )
                outcomes.update(capped)
                ids = [i for i in ids if i not in capped]
            transitions.settle(session, owner=self.worker_id, outcomes=outcomes, now=now)
            assigned = [i for i, o in outcomes.items() if o.status == S.AWAITING_STAFF]
            staff_service.open_tasks(session, assigned, now)  # remind mode: the inbox
            if not ids:
                return set()
            return transitions.mark_sending(
                session, owner=self.worker_id, ids=ids, lease_until=self.leases.lease_until()
            )


async def _finish(running: set[asyncio.Task[DispatchStats]], total: DispatchStats) -> None:
    """Never abandon a batch half sent: let the batches still running finish
    and record, and count what they did."""
    if running:
        await asyncio.wait(running)
        for task in running:
            if not task.cancelled() and task.exception() is None:
                total.add(task.result())
