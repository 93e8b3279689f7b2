"""Dispatch: claim due deliveries, render them, hand them to channels, record
the outcome. Two-phase and fenced by a lease so a delivery is never sent twice.

    scheduled ──claim──► claimed ──mark──► sending ──result──► sent / failed /
        ▲                   │ lease expired      │ lease expired     scheduled (retry)
        └───────────────────┘                    ▼
                                              unknown (not resent)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from audiences import service as audiences_service
from audiences.models import Contact
from channels import service as channels_service
from channels.base import (
    ChannelAdapter,
    ChannelError,
    OutboundMessage,
    ResultStatus,
    SendResult,
    task_poller,
)
from channels.breaker import BreakerConfig, CircuitBreakers
from channels.models import ChannelInstance
from channels.ratelimit import build_limiter
from channels.registry import ChannelPool, adapter_class
from scheduler.outbox import policies, repository, tasks
from scheduler.outbox.models import REASON_LENGTH, Delivery, DeliveryStatus, clip_reason
from scheduler.outbox.service import held_template_ids
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint
from sop_templates.rendering import RenderError, build_context, render_parts
from sop_templates.schemas import TemplateSpec
from sopbot.clock import Clock
from sopbot.db import reader, rowcount, session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.dispatch")

S = DeliveryStatus
_FINISH_ATTEMPTS = 4


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


@dataclass
class _Outcome:
    status: str
    reason: str | None = None
    provider_message_id: str | None = None
    run_at: datetime | None = None
    rendered: list[dict[str, Any]] | None = None
    sent: bool = False
    retry_after: float | None = None
    expires_at: datetime | None = None  # a policy deferral moves the deadline too


@dataclass(frozen=True)
class _CapCheck:
    """A claimed row whose template caps sends per target; decided in _mark_sending."""

    key: policies.TargetKey
    cap: policies.FrequencyCap
    zone: Any
    quiet: policies.QuietHours | None
    grace: timedelta
    expires_at: datetime


class Dispatcher:
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
        self._touchpoints: dict[int, Touchpoint] = {}
        self._stopping = False
        # Delivery policies (scheduler.outbox.policies), channel controls (channels.*).
        self.workspace = policies.WorkspaceDefaults.from_settings(settings)
        self.limiter = build_limiter(engine, settings)
        self.breakers = CircuitBreakers(
            engine,
            worker_id,
            probe_wait=timedelta(seconds=settings.breaker_probe_wait_seconds),
            probe_lease=timedelta(seconds=settings.lease_seconds),
        )
        self._template_policies: dict[int, policies.TemplatePolicy] = {}  # by version id
        self._channel_policies: dict[str, channels_service.EffectivePolicy] = {}
        self._breaker_seen: dict[str, dict[str, Any]] = {}
        self._cap_checks: dict[int, _CapCheck] = {}

    # -- the tick ---------------------------------------------------------------

    async def run_once(self, max_batches: int | None = None) -> DispatchStats:
        """Drain due deliveries: claim a batch, send it, repeat until none is due
        (or ``max_batches``). Returns what happened.

        Up to ``dispatch_pipeline`` batches are in progress at once: the next
        batch is claimed and rendered while the previous one waits on its
        channel, so a slow provider does not leave the worker idle between
        batches. Each batch is fenced by its own lease exactly as batches of two
        workers are, so this changes nothing about exactly-once.
        """
        total = DispatchStats()
        limit = max_batches or self.settings.max_batches_per_tick
        depth = max(1, self.settings.dispatch_pipeline)
        running: set[asyncio.Task[DispatchStats]] = set()
        claimed, drained = 0, False
        try:
            while True:
                while not drained and not self._stopping and claimed < limit:
                    if len(running) >= depth:
                        break
                    # Expiring overdue rows scans every due row, so once per tick
                    # is enough; doing it per batch made draining a backlog quadratic.
                    rows = await asyncio.to_thread(
                        self.claim, self.settings.claim_batch_size, expire=claimed == 0
                    )
                    if not rows:
                        drained = True
                        break
                    claimed += 1
                    running.add(asyncio.create_task(self._timed_process(rows)))
                if not running:
                    break
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    total.add(task.result())
        finally:
            # Never abandon a batch half sent: let the others finish and record.
            if running:
                await asyncio.wait(running)
                for task in running:
                    if not task.cancelled() and task.exception() is None:
                        total.add(task.result())
        return total

    async def _timed_process(self, rows: Sequence[Any]) -> DispatchStats:
        started = time.perf_counter()
        batch = await self.process(rows)
        batch.batch_seconds.append(time.perf_counter() - started)
        return batch

    def stop(self) -> None:
        """Stop claiming new batches (graceful shutdown)."""
        self._stopping = True

    # -- phase 1: claim -----------------------------------------------------------

    def claim(self, limit: int, *, expire: bool = True) -> list[Any]:
        """Claim up to ``limit`` due rows (after marking overdue ones missed)."""
        now = self.clock.now()
        with session_scope(self.engine, immediate=True) as session:
            held = held_template_ids(session)
            if expire:
                self._expire_overdue(session, now, held)
            return repository.claim_due(
                session,
                now=now,
                owner=self.worker_id,
                lease_until=now + timedelta(seconds=self.settings.lease_seconds),
                limit=limit,
                held_templates=held,
            )

    def _expire_overdue(self, session: Session, now: datetime, held: Sequence[int]) -> int:
        """Due rows past their grace period become missed (never tried) or failed
        (retried until the deadline) instead of going out late."""
        conditions = [
            col(Delivery.status) == S.SCHEDULED,
            col(Delivery.run_at) <= now,
            col(Delivery.expires_at) < now,
        ]
        if held:
            conditions.append(col(Delivery.template_id).not_in(list(held)))
        stmt = (
            update(Delivery)
            .where(*conditions)
            .values(
                status=case((col(Delivery.attempts) > 0, S.FAILED), else_=S.MISSED),
                reason=case(
                    (
                        col(Delivery.attempts) > 0,
                        func.substr(
                            "gave up: retries ran past the grace period (last error: "
                            + col(Delivery.reason)
                            + ")",
                            1,
                            REASON_LENGTH,
                        ),
                    ),
                    else_="not sent within its grace period (scheduler down or backlog)",
                ),
                finished_at=now,
                lease_owner=None,
            )
        )
        return rowcount(session.execute(stmt))

    # -- phase 2: render, mark sending, send, record ---------------------------

    async def process(self, rows: Sequence[Any]) -> DispatchStats:
        stats = DispatchStats(claimed=len(rows), batches=1)
        messages, outcomes = await asyncio.to_thread(self._prepare, rows)
        by_id = {r.id: r for r in rows}
        allowed = await asyncio.to_thread(self._mark_sending, list(messages), outcomes)
        # Send per channel, in the adapter's batch size, concurrently.
        groups: dict[str, list[OutboundMessage]] = defaultdict(list)
        for delivery_id, message in messages.items():
            if delivery_id in allowed:
                groups[by_id[delivery_id].channel].append(message)
        # Bounded: at most send_concurrency adapter calls in flight per tick.
        limit = asyncio.Semaphore(self.settings.send_concurrency)
        calls = []
        results: dict[int, _Outcome] = {}
        adapters: dict[str, ChannelAdapter] = {}
        for channel_name, batch in groups.items():
            try:
                adapter = adapters[channel_name] = self.channels.get(channel_name)
            except ChannelError as exc:  # disabled by another process since _prepare
                results.update({m.delivery_id: _Outcome(S.FAILED, str(exc)) for m in batch})
                continue
            size = max(1, adapter.capabilities.max_batch)
            for start in range(0, len(batch), size):
                calls.append(
                    self._send_recorded(channel_name, adapter, batch[start : start + size], limit)
                )
        for part in await asyncio.gather(*calls):
            results.update(part)
        for delivery_id, outcome in results.items():
            if outcome.status != S.SENT:
                kind = _ERROR_KINDS.get(outcome.status, outcome.status)
                stats.channel_errors[(by_id[delivery_id].channel, kind)] += 1
            outcome.rendered = messages[delivery_id].parts
            if outcome.status == "retry":
                outcome = self._retry_or_fail(by_id[delivery_id], outcome)
            results[delivery_id] = outcome
        created = self._note_modes(by_id, messages, results, adapters)
        await asyncio.to_thread(self._finish, results, created)
        finished_at = self.clock.now()
        for delivery_id, outcome in results.items():
            if outcome.sent:
                due_at = by_id[delivery_id].due_at
                stats.lateness.append((finished_at - due_at).total_seconds())
        for outcome in list(outcomes.values()) + list(results.values()):
            stats.outcomes[outcome.status] += 1
        lost = [i for i in messages if i not in allowed and i not in outcomes]
        if lost:
            stats.outcomes["lease_lost"] += len(lost)
        _log_batch(self.worker_id, rows, outcomes, results, lost)
        return stats

    def _prepare(
        self, rows: Sequence[Any]
    ) -> tuple[dict[int, OutboundMessage], dict[int, _Outcome]]:
        """Render every claimed row. Rows that cannot be sent get their final
        outcome here (inactive target, render error, channel cannot do it)."""
        messages: dict[int, OutboundMessage] = {}
        outcomes: dict[int, _Outcome] = {}
        now = self.clock.now()
        with Session(reader(self.engine)) as session:
            self._load_touchpoints(session, {r.touchpoint_id for r in rows})
            self._load_template_policies(session, {r.version_id for r in rows})
            zones = self._contact_zones(session, rows)
            names: dict[int, str] = dict(
                session.execute(
                    select(SopTemplate.id, SopTemplate.name).where(  # type: ignore[call-overload]
                        col(SopTemplate.id).in_({r.template_id for r in rows})
                    )
                ).all()
            )
            targets: dict[str, dict[int, dict[str, Any]]] = {}
            for kind in {r.target_kind for r in rows}:
                ids = [r.target_id for r in rows if r.target_kind == kind]
                targets[kind] = audiences_service.render_targets(session, kind, ids)
        for row in rows:
            touchpoint = self._touchpoints[row.touchpoint_id]
            target = targets[row.target_kind].get(row.target_id)
            if target is None:
                outcomes[row.id] = _Outcome(S.SKIPPED, f"{row.target_kind} no longer exists")
                continue
            if not audiences_service.is_active(target):
                outcomes[row.id] = _Outcome(S.SKIPPED, f"{row.target_kind} is {target['status']}")
                continue
            try:
                adapter = self.channels.get(row.channel)
            except ChannelError as exc:
                outcomes[row.id] = _Outcome(S.FAILED, str(exc))
                continue
            problem = _capability_problem(adapter, row, touchpoint)
            if problem:
                outcomes[row.id] = _Outcome(S.FAILED, problem)
                continue
            policy = self._template_policies[row.version_id]
            own_zone = zones.get(row.target_id) if row.target_kind == "contact" else None
            zone = policies.local_zone(policy.zone, own_zone)
            grace = timedelta(seconds=touchpoint.grace_seconds)
            if policy.quiet is not None:
                decision = policy.quiet.decide(now, zone)
                if decision.action != "send":
                    outcomes[row.id] = _policy_outcome(decision, grace, row.expires_at)
                    continue
            context = build_context(
                target_kind=row.target_kind,
                target=target,
                template_name=names.get(row.template_id, ""),
                touchpoint_name=touchpoint.name,
                account=target.get("account"),
                extra={"due_at": row.due_at},
            )
            try:
                parts = render_parts(touchpoint.content, context)
            except RenderError as exc:
                outcomes[row.id] = _Outcome(S.FAILED, f"content could not be rendered: {exc}")
                continue
            account = target.get("account") or {}
            messages[row.id] = OutboundMessage(
                delivery_id=row.id,
                idempotency_key=f"sopbot-d{row.id}",
                target_kind=row.target_kind,
                target_external_id=target["external_id"],
                account_external_id=account.get("external_id"),
                parts=parts,
                mode=row.mode,
                target_name=target.get("name"),
                template_name=names.get(row.template_id),
                touchpoint_name=touchpoint.name,
            )
            if policy.cap is not None:
                key = (row.target_kind, row.target_id)
                self._cap_checks[row.id] = _CapCheck(
                    key, policy.cap, zone, policy.quiet, grace, row.expires_at
                )
        self._admit_channels(rows, messages, outcomes, now)
        return messages, outcomes

    def _load_template_policies(self, session: Session, version_ids: set[int]) -> None:
        missing = version_ids - self._template_policies.keys()
        if missing:
            # Published versions are immutable: their policies can be cached forever.
            for version_id, spec in session.execute(
                select(TemplateVersion.id, TemplateVersion.spec).where(  # type: ignore[call-overload]
                    col(TemplateVersion.id).in_(missing)
                )
            ).all():
                self._template_policies[version_id] = policies.template_policy(
                    TemplateSpec.model_validate(spec), self.workspace
                )

    def _contact_zones(self, session: Session, rows: Sequence[Any]) -> dict[int, str]:
        """Contacts' own time zones, where known (quiet hours follow them)."""
        ids = {
            r.target_id
            for r in rows
            if r.target_kind == "contact" and self._template_policies[r.version_id].quiet
        }
        if not ids:
            return {}
        return dict(
            session.execute(
                select(Contact.id, Contact.timezone).where(  # type: ignore[call-overload]
                    col(Contact.id).in_(ids), col(Contact.timezone).is_not(None)
                )
            ).all()
        )

    def _admit_channels(
        self,
        rows: Sequence[Any],
        messages: dict[int, OutboundMessage],
        outcomes: dict[int, _Outcome],
        now: datetime,
    ) -> None:
        """Circuit breaker and rate limit, per channel instance: what may not be
        sent now goes back to ``scheduled`` (no attempt used) with the reason."""
        by_id = {r.id: r for r in rows}
        by_channel: dict[str, list[int]] = defaultdict(list)
        for delivery_id in messages:
            by_channel[by_id[delivery_id].channel].append(delivery_id)
        if not by_channel:
            return
        with Session(reader(self.engine)) as session:
            self._channel_policies.update(
                channels_service.effective_policies(session, by_channel, self.settings)
            )
            states = self.breakers.states(session, by_channel)
        self._breaker_seen.update(states)

        def hold(delivery_id: int, until: datetime, reason: str) -> None:
            row = by_id[delivery_id]
            del messages[delivery_id]
            self._cap_checks.pop(delivery_id, None)
            if until > row.expires_at:
                status = S.FAILED if row.attempts else S.MISSED
                outcomes[delivery_id] = _Outcome(
                    status, f"not sent within its grace period: {reason}"
                )
            else:
                outcomes[delivery_id] = _Outcome(S.SCHEDULED, reason, run_at=until)

        for channel, ids in by_channel.items():
            admission = self.breakers.admit(states[channel], now)
            keep = ids if admission.allow is None else ids[: admission.allow]
            for delivery_id in ids[len(keep) :]:
                assert admission.until is not None and admission.reason is not None
                hold(delivery_id, admission.until, admission.reason)
            policy = self._channel_policies[channel]
            if policy.rate_per_second and policy.burst and keep:
                grant = self.limiter.acquire(
                    channel, len(keep), policy.rate_per_second, policy.burst, now
                )
                reason = (
                    f"rate limit: channel {channel!r} sends at most "
                    f"{policy.rate_per_second:g}/s; waiting for its turn"
                )
                for index, delivery_id in enumerate(keep[grant.granted :]):
                    hold(delivery_id, now + timedelta(seconds=grant.delay_for(index)), reason)

    def _load_touchpoints(self, session: Session, ids: set[int]) -> None:
        missing = ids - self._touchpoints.keys()
        if missing:
            # Published touchpoints are immutable, so caching them forever is safe.
            for tp in session.exec(
                select(Touchpoint).where(col(Touchpoint.id).in_(missing))
            ).scalars():  # type: ignore[call-overload]
                self._touchpoints[tp.id] = tp

    def _mark_sending(self, ids: list[int], outcomes: dict[int, _Outcome]) -> set[int]:
        """Fence: only rows still claimed by this worker move to ``sending``.
        Rows finished during preparation are recorded in the same transaction.

        Frequency caps are decided here, in the transaction that marks rows
        sending (targets locked on PostgreSQL, the write lock on SQLite), so two
        workers cannot both send a contact's one-per-day message. Capped rows
        get their outcome added to ``outcomes``."""
        now = self.clock.now()
        checks = {i: self._cap_checks.pop(i) for i in ids if i in self._cap_checks}
        with session_scope(self.engine) as session:
            if checks:
                capped = self._apply_caps(session, checks, now)
                outcomes.update(capped)
                ids = [i for i in ids if i not in capped]
            allowed: set[int] = set()
            for chunk in repository.chunked(ids, 900):
                stmt = (
                    update(Delivery)
                    .where(
                        col(Delivery.id).in_(list(chunk)),
                        col(Delivery.status) == S.CLAIMED,
                        col(Delivery.lease_owner) == self.worker_id,
                    )
                    .values(status=S.SENDING, attempts=col(Delivery.attempts) + 1)
                    .returning(col(Delivery.id))
                )
                allowed.update(session.execute(stmt).scalars())
            self._write_outcomes(session, outcomes, now, from_status=(S.CLAIMED,))
        return allowed

    def _apply_caps(
        self, session: Session, checks: dict[int, _CapCheck], now: datetime
    ) -> dict[int, _Outcome]:
        keys = {c.key for c in checks.values()}
        policies.lock_targets(session, keys)
        since = min(c.cap.lookback(now, c.zone) for c in checks.values())
        recent = policies.recent_sends(session, keys, since)
        admitted: dict[policies.TargetKey, list[datetime]] = defaultdict(list)
        held: dict[int, _Outcome] = {}
        for delivery_id, check in checks.items():  # claim order: earliest due first
            decision = check.cap.decide(
                now, check.zone, recent.of(check.key, now) + admitted[check.key]
            )
            if decision.action == "send":
                admitted[check.key].append(now)
                continue
            if decision.action == "defer" and check.quiet is not None and decision.until:
                # Not into the night: a cap deferral lands after quiet hours.
                end = check.quiet.window_end(decision.until, check.zone)
                if end is not None:
                    decision = policies.Decision(
                        "defer", end, f"{decision.reason}, after quiet hours {check.quiet.label}"
                    )
            held[delivery_id] = _policy_outcome(decision, check.grace, check.expires_at)
        return held

    async def _send_recorded(
        self,
        channel: str,
        adapter: ChannelAdapter,
        batch: list[OutboundMessage],
        limit: asyncio.Semaphore,
    ) -> dict[int, _Outcome]:
        """One adapter call under the concurrency limit; its results feed the breaker."""
        async with limit:
            results = await self._send(adapter, batch)
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
        for attempt in range(_FINISH_ATTEMPTS):
            try:
                return self.breakers.record(
                    channel,
                    successes=successes,
                    failures=failures,
                    error=error,
                    now=self.clock.now(),
                    config=config,
                )
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt + 1 == _FINISH_ATTEMPTS:
                    log.exception("could not update channel %s's circuit breaker", channel)
                    return None
                log.warning(
                    "database connection lost while updating channel %s's circuit breaker; "
                    "retrying",
                    channel,
                )
                time.sleep(0.2 * 2**attempt)
            except Exception:  # noqa: BLE001 - bookkeeping must not lose the batch
                log.exception("could not update channel %s's circuit breaker", channel)
                return None
        return None

    def _note_modes(
        self,
        by_id: dict[int, Any],
        messages: dict[int, OutboundMessage],
        results: dict[int, _Outcome],
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
    ) -> dict[int, _Outcome]:
        try:
            results = await adapter.send(batch)
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the batch
            log.exception("channel %s raised while sending", adapter.name)
            reason = f"channel {adapter.name} raised {type(exc).__name__}: {exc}; outcome unknown, not resent"
            return {m.delivery_id: _Outcome(S.UNKNOWN, reason) for m in batch}
        if len(results) != len(batch):
            reason = (
                f"channel {adapter.name} returned {len(results)} results for {len(batch)} messages"
            )
            return {m.delivery_id: _Outcome(S.UNKNOWN, reason) for m in batch}
        return {m.delivery_id: _to_outcome(r) for m, r in zip(batch, results, strict=True)}

    def _retry_or_fail(self, row: Any, outcome: _Outcome) -> _Outcome:
        attempts = row.attempts + 1  # this attempt
        error = outcome.reason or "retryable error"
        channel_policy = self._channel_policies.get(row.channel)
        max_attempts = channel_policy.max_attempts if channel_policy else self.settings.max_attempts
        if attempts >= max_attempts:
            return _Outcome(
                S.FAILED, f"gave up after {attempts} attempts: {error}", rendered=outcome.rendered
            )
        backoff = min(
            self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1)
        )
        backoff *= 0.5 + self.rng.random() / 2  # equal jitter: spread retries of a burst
        # The platform's Retry-After wins when it asks for a longer wait.
        run_at = self.clock.now() + timedelta(seconds=max(backoff, outcome.retry_after or 0))
        if run_at > row.expires_at:
            return _Outcome(
                S.FAILED,
                f"gave up: next retry would be past the grace period ({error})",
                rendered=outcome.rendered,
            )
        return _Outcome(
            S.SCHEDULED,
            f"attempt {attempts} failed, retrying: {error}",
            run_at=run_at,
            rendered=outcome.rendered,
        )

    def _finish(
        self,
        results: dict[int, _Outcome],
        created: dict[tuple[str, str, str], list[int]] | None = None,
    ) -> None:
        # The messages are out: losing these writes to a dropped database
        # connection would turn sent deliveries into ``unknown``. The writes are
        # fenced by lease owner and status, so trying again on a new connection
        # (pool_pre_ping) is safe.
        for attempt in range(_FINISH_ATTEMPTS):
            now = self.clock.now()
            try:
                with session_scope(self.engine) as session:
                    # A row the reaper marked unknown while we were still sending
                    # gets the truth once we know it.
                    self._write_outcomes(session, results, now, from_status=(S.SENDING, S.UNKNOWN))
                    if created:
                        tasks.record_created(session, created, now, self.settings)
                return
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt + 1 == _FINISH_ATTEMPTS:
                    raise
                log.warning(
                    "database connection lost while recording %d outcomes; retrying",
                    len(results),
                    extra={"worker_id": self.worker_id, "delivery_ids": list(results)},
                )
                time.sleep(0.2 * 2**attempt)

    def _write_outcomes(
        self,
        session: Session,
        outcomes: dict[int, _Outcome],
        now: datetime,
        from_status: tuple[str, ...],
    ) -> None:
        if not outcomes:
            return
        params = []
        for delivery_id, o in outcomes.items():
            terminal = o.status != S.SCHEDULED
            params.append(
                {
                    "b_id": delivery_id,
                    "b_status": o.status,
                    "b_reason": clip_reason(o.reason),
                    "b_provider": o.provider_message_id,
                    "b_sent_at": now if o.sent else None,
                    "b_finished_at": now if terminal else None,
                    "b_run_at": o.run_at or now,
                    "b_keep_run_at": o.run_at is None,
                    "b_expires_at": o.expires_at or now,
                    "b_keep_expires_at": o.expires_at is None,
                    "b_rendered": o.rendered,
                }
            )
        table = repository.DELIVERIES
        stmt = (
            table.update()
            .where(
                table.c.id == bindparam("b_id"),
                table.c.lease_owner == self.worker_id,
                or_(*(table.c.status == status for status in from_status)),
            )
            .values(
                status=bindparam("b_status"),
                reason=bindparam("b_reason"),
                provider_message_id=bindparam("b_provider"),
                sent_at=bindparam("b_sent_at", type_=table.c.sent_at.type),
                finished_at=bindparam("b_finished_at", type_=table.c.finished_at.type),
                run_at=case(
                    (bindparam("b_keep_run_at"), table.c.run_at),
                    else_=bindparam("b_run_at", type_=table.c.run_at.type),
                ),
                expires_at=case(
                    (bindparam("b_keep_expires_at"), table.c.expires_at),
                    else_=bindparam("b_expires_at", type_=table.c.expires_at.type),
                ),
                rendered=bindparam("b_rendered", type_=table.c.rendered.type),
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        repository.execute_many(session.connection(), stmt, params)

    # -- leases ---------------------------------------------------------------------

    def reap_expired_leases(self) -> dict[str, int]:
        """Claimed rows whose lease expired go back to scheduled (nothing was
        sent). Sending rows whose lease expired become unknown — unless their
        channel deduplicates on the delivery key, then they are retried."""
        now = self.clock.now()
        with session_scope(self.engine, immediate=True) as session:
            released = rowcount(
                session.execute(
                    update(Delivery)
                    .where(col(Delivery.status) == S.CLAIMED, col(Delivery.lease_expires_at) < now)
                    .values(status=S.SCHEDULED, lease_owner=None, lease_expires_at=None)
                )
            )
            channels = set(
                session.execute(
                    select(Delivery.channel)  # type: ignore[call-overload]
                    .where(col(Delivery.status) == S.SENDING, col(Delivery.lease_expires_at) < now)
                    .distinct()
                ).scalars()
            )
            idempotent = [c for c in channels if _channel_is_idempotent(session, c)]
            resent = 0
            if idempotent:
                resent = rowcount(
                    session.execute(
                        update(Delivery)
                        .where(
                            col(Delivery.status) == S.SENDING,
                            col(Delivery.lease_expires_at) < now,
                            col(Delivery.channel).in_(idempotent),
                        )
                        .values(
                            status=S.SCHEDULED,
                            lease_owner=None,
                            lease_expires_at=None,
                            reason="worker stopped mid-send; channel deduplicates, so sending again",
                        )
                    )
                )
            unknown = rowcount(
                session.execute(
                    update(Delivery)
                    .where(col(Delivery.status) == S.SENDING, col(Delivery.lease_expires_at) < now)
                    .values(
                        status=S.UNKNOWN,
                        reason="worker stopped while sending (lease expired); outcome unknown, not resent",
                        finished_at=now,
                    )
                )
            )
        return {"released": released, "resent": resent, "unknown": unknown}

    def release_claims(self) -> int:
        """Give back what this worker claimed but has not started sending."""
        with session_scope(self.engine) as session:
            return rowcount(
                session.execute(
                    update(Delivery)
                    .where(
                        col(Delivery.status) == S.CLAIMED,
                        col(Delivery.lease_owner) == self.worker_id,
                    )
                    .values(status=S.SCHEDULED, lease_owner=None, lease_expires_at=None)
                )
            )


_ERROR_KINDS = {"retry": "retryable", S.FAILED: "permanent", S.UNKNOWN: "unknown"}


def _log_batch(
    worker_id: str,
    rows: Sequence[Any],
    outcomes: dict[int, _Outcome],
    results: dict[int, _Outcome],
    lease_lost: list[int],
) -> None:
    """One INFO line per batch with every delivery id, and one WARNING line per
    (status, reason) for what did not go out, so a delivery id in a complaint
    can be found in the logs (``SOPBOT_LOG_FORMAT=json`` keeps them as fields)."""
    by_status: dict[str, list[int]] = defaultdict(list)
    problems: dict[tuple[str, str], list[int]] = defaultdict(list)
    for delivery_id, outcome in (*outcomes.items(), *results.items()):
        by_status[outcome.status].append(delivery_id)
        if outcome.status in (S.FAILED, S.UNKNOWN, S.SCHEDULED):
            problems[(outcome.status, outcome.reason or "")].append(delivery_id)
    if lease_lost:
        by_status["lease_lost"] = list(lease_lost)
    log.info(
        "dispatched batch of %d: %s",
        len(rows),
        ", ".join(f"{status}={len(ids)}" for status, ids in sorted(by_status.items())),
        extra={
            "worker_id": worker_id,
            "delivery_ids": [r.id for r in rows],
            "outcomes": {status: ids for status, ids in sorted(by_status.items())},
        },
    )
    for (status, reason), ids in problems.items():
        log.log(
            logging.INFO if status == S.SCHEDULED else logging.WARNING,
            "%d deliveries %s: %s (ids %s)",
            len(ids),
            "deferred" if status == S.SCHEDULED else status,
            reason,
            _id_list(ids),
            extra={"worker_id": worker_id, "status": status, "delivery_ids": ids, "reason": reason},
        )
    if lease_lost:
        log.warning(
            "%d deliveries lost their lease before sending (ids %s)",
            len(lease_lost),
            _id_list(lease_lost),
            extra={"worker_id": worker_id, "delivery_ids": list(lease_lost)},
        )


def _id_list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... {len(ids) - limit} more"


def _to_outcome(result: SendResult) -> _Outcome:
    if result.status == ResultStatus.SENT:
        return _Outcome(S.SENT, None, result.provider_message_id, sent=True)
    if result.status == ResultStatus.RETRYABLE:
        return _Outcome(
            "retry", result.error or "temporary channel error", retry_after=result.retry_after
        )
    return _Outcome(S.FAILED, result.error or "permanent channel error")


def _policy_outcome(
    decision: policies.Decision, grace: timedelta, expires_at: datetime
) -> _Outcome:
    """A quiet-hours or cap decision as an outcome: skipped, or back to scheduled
    at the deferral time with the touchpoint's grace period counted from there."""
    if decision.action == "skip" or decision.until is None:
        return _Outcome(S.SKIPPED, decision.reason)
    until = decision.until
    return _Outcome(
        S.SCHEDULED, decision.reason, run_at=until, expires_at=max(expires_at, until + grace)
    )


def _capability_problem(adapter: ChannelAdapter, row: Any, touchpoint: Any) -> str | None:
    caps = adapter.capabilities
    if row.mode not in caps.modes:
        return f"channel {row.channel!r} ({adapter.name}) cannot use execution mode {row.mode!r}"
    if row.target_kind not in caps.targets:
        return f"channel {row.channel!r} ({adapter.name}) cannot send to a {row.target_kind}"
    kinds = {p["kind"] for p in touchpoint.content} - set(caps.parts)
    if kinds:
        return (
            f"channel {row.channel!r} ({adapter.name}) cannot send {', '.join(sorted(kinds))} parts"
        )
    return None


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
