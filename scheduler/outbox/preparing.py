"""Preparing a claimed batch: render each row, decide what cannot or may not be
sent now (inactive target, render error, channel capability, breaker, rate
limit) and, in the transaction that marks rows sending, frequency caps."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from audiences import service as audiences_service
from audiences.models import Contact
from channels import service as channels_service
from channels.base import ChannelAdapter, ChannelError, OutboundMessage
from channels.breaker import CircuitBreakers
from channels.ratelimit import RateLimiter
from channels.registry import ChannelPool
from scheduler.outbox import modes, policies, wecom_quota
from scheduler.outbox.material_links import MaterialSigner
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.transitions import Outcome
from scheduler.outcomes import experiments, links
from scheduler.staff import service as staff_service
from sop_templates.models import SopTemplate, TemplateVersion, Touchpoint
from sop_templates.rendering import RenderError, build_context, render_parts
from sop_templates.schemas import TemplateSpec
from sopbot.clock import Clock
from sopbot.db import reader
from sopbot.settings import Settings

S = DeliveryStatus


@dataclass(frozen=True)
class CapCheck:
    """A claimed row whose template caps sends per target; decided when it is
    marked sending."""

    key: policies.TargetKey
    cap: policies.FrequencyCap
    zone: Any
    quiet: policies.QuietHours | None
    grace: timedelta
    expires_at: datetime


class PreparedTouchpoint(NamedTuple):
    """What preparing reads of a published touchpoint (immutable, so cached
    for good), as plain fields: an ORM attribute read costs a descriptor call,
    and a batch reads several per row."""

    id: int
    name: str
    content: list[dict[str, Any]]
    options: dict[str, Any]
    grace: timedelta

    @classmethod
    def of(cls, touchpoint: Touchpoint) -> PreparedTouchpoint:
        return cls(
            touchpoint.id,  # type: ignore[arg-type]
            touchpoint.name,
            touchpoint.content,
            touchpoint.options,
            timedelta(seconds=touchpoint.grace_seconds),
        )


class BatchPreparation:
    """The dispatcher's preparing half (mixed into ``Dispatcher``)."""

    engine: Engine
    clock: Clock
    channels: ChannelPool
    settings: Settings
    rng: random.Random
    workspace: policies.WorkspaceDefaults
    limiter: RateLimiter
    breakers: CircuitBreakers
    _touchpoints: dict[int, PreparedTouchpoint]
    _template_policies: dict[int, policies.TemplatePolicy]
    _channel_policies: dict[str, channels_service.EffectivePolicy]
    _breaker_seen: dict[str, dict[str, Any]]
    _cap_checks: dict[int, CapCheck]
    _quota_checks: dict[int, wecom_quota.QuotaCheck]
    _sign_materials: MaterialSigner

    def _prepare(
        self, rows: Sequence[Any], send_at: datetime | None = None
    ) -> tuple[dict[int, OutboundMessage], dict[int, Outcome]]:
        """Render every claimed row. Rows that cannot be sent get their final
        outcome here (inactive target, render error, channel cannot do it).
        Policies (quiet hours, expiry, rate limits) are decided as of
        ``send_at`` when the rows were claimed ahead of it, else now."""
        messages: dict[int, OutboundMessage] = {}
        outcomes: dict[int, Outcome] = {}
        now = self.clock.now()
        if send_at is not None:
            now = max(now, send_at)
        with Session(reader(self.engine)) as session:
            self._load_touchpoints(session, {r.touchpoint_id for r in rows})
            template_policies = self._load_template_policies(session, {r.version_id for r in rows})
            zones = self._contact_zones(session, rows, template_policies)
            outcomes_cache = experiments.cache_of(self)
            outcomes_cache.load(session, {r.version_id for r in rows})
            variant_facts = outcomes_cache.facts(session, rows)
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
        adapters: dict[str, ChannelAdapter | ChannelError] = {}
        problems: dict[tuple[str, int, str, str], str | None] = {}
        for row in rows:
            touchpoint = self._touchpoints[row.touchpoint_id]
            target = targets[row.target_kind].get(row.target_id)
            if target is None:
                outcomes[row.id] = Outcome(S.SKIPPED, f"{row.target_kind} no longer exists")
                continue
            if not audiences_service.is_active(target):
                outcomes[row.id] = Outcome(S.SKIPPED, f"{row.target_kind} is {target['status']}")
                continue
            adapter = adapters.get(row.channel)
            if adapter is None:  # once per channel and batch
                try:
                    adapter = adapters[row.channel] = self.channels.get(row.channel)
                except ChannelError as exc:
                    adapter = adapters[row.channel] = exc
            if isinstance(adapter, ChannelError):
                outcomes[row.id] = Outcome(S.FAILED, str(adapter))
                continue
            fit = (row.channel, row.touchpoint_id, row.mode, row.target_kind)
            problem = problems.get(fit, "")
            if problem == "":  # once per channel, touchpoint, mode and target kind
                problem = problems[fit] = capability_problem(adapter, row, touchpoint)
            if problem:
                outcomes[row.id] = Outcome(S.FAILED, problem)
                continue
            policy = template_policies[row.version_id]
            own_zone = zones.get(row.target_id) if row.target_kind == "contact" else None
            zone = policies.local_zone(policy.zone, own_zone)
            grace = touchpoint.grace
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
                content, _variant = outcomes_cache.content_for(row, touchpoint, variant_facts)
                # library materials leave with their signed public address
                parts = self._sign_materials(render_parts(content, context), now)
            except RenderError as exc:
                outcomes[row.id] = Outcome(S.FAILED, f"content could not be rendered: {exc}")
                continue
            account = target.get("account") or {}
            message = OutboundMessage(
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
                options=modes.message_options(row.mode, touchpoint.options, target),
            )
            if row.mode == "remind" and self.settings.staff_inbox:
                # a task in the staff member's inbox, announced by a digest
                # (scheduler.staff), not one app message per delivery
                outcomes[row.id] = (
                    staff_service.assigned_outcome(message)
                    if message.account_external_id
                    else Outcome(S.FAILED, "no staff account owns this target to remind")
                )
                continue
            messages[row.id] = message
            quota = wecom_quota.check_for(adapter, row, target["external_id"], policy.quiet, grace)
            if quota is not None:
                self._quota_checks[row.id] = quota
            if policy.cap is not None:
                key = (row.target_kind, row.target_id)
                self._cap_checks[row.id] = CapCheck(
                    key, policy.cap, zone, policy.quiet, grace, row.expires_at
                )
        links.track(
            self.engine,
            outcomes_cache,
            rows,
            messages,
            touchpoint_names={r.id: self._touchpoints[r.touchpoint_id].name for r in rows},
            base_url=self.settings.link_base_url,
            prefix=self.settings.link_prefix,
            now=now,
        )
        self._admit_channels(rows, messages, outcomes, now)
        return messages, outcomes

    def _load_template_policies(
        self, session: Session, version_ids: set[int]
    ) -> dict[int, policies.TemplatePolicy]:
        # The map first, then the defaults: ``use_workspace`` (another thread)
        # swaps them in the opposite order, so a policy worked out from old
        # defaults can only land in the map it throws away.
        cache = self._template_policies
        workspace = self.workspace
        missing = version_ids - cache.keys()
        if missing:
            # Published versions are immutable: their policies are cached until
            # the workspace defaults change.
            for version_id, spec in session.execute(
                select(TemplateVersion.id, TemplateVersion.spec).where(  # type: ignore[call-overload]
                    col(TemplateVersion.id).in_(missing)
                )
            ).all():
                cache[version_id] = policies.template_policy(
                    TemplateSpec.model_validate(spec), workspace
                )
        return cache

    def _contact_zones(
        self,
        session: Session,
        rows: Sequence[Any],
        template_policies: dict[int, policies.TemplatePolicy],
    ) -> dict[int, str]:
        """Contacts' own time zones, where known (quiet hours follow them)."""
        ids = {
            r.target_id
            for r in rows
            if r.target_kind == "contact" and template_policies[r.version_id].quiet
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
        outcomes: dict[int, Outcome],
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
            self._quota_checks.pop(delivery_id, None)
            if until > row.expires_at:
                status = S.FAILED if row.attempts else S.MISSED
                outcomes[delivery_id] = Outcome(
                    status, f"not sent within its grace period: {reason}"
                )
            else:
                outcomes[delivery_id] = Outcome(S.SCHEDULED, reason, run_at=until)

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
                self._touchpoints[tp.id] = PreparedTouchpoint.of(tp)

    def _apply_caps(
        self, session: Session, checks: dict[int, CapCheck], now: datetime
    ) -> dict[int, Outcome]:
        keys = {c.key for c in checks.values()}
        policies.lock_targets(session, keys)
        since = min(c.cap.lookback(now, c.zone) for c in checks.values())
        recent = policies.recent_sends(session, keys, since)
        admitted: dict[policies.TargetKey, list[datetime]] = defaultdict(list)
        held: dict[int, Outcome] = {}
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


def _policy_outcome(decision: policies.Decision, grace: timedelta, expires_at: datetime) -> Outcome:
    """A quiet-hours or cap decision as an outcome: skipped, or back to scheduled
    at the deferral time with the touchpoint's grace period counted from there."""
    if decision.action == "skip" or decision.until is None:
        return Outcome(S.SKIPPED, decision.reason)
    until = decision.until
    return Outcome(
        S.SCHEDULED, decision.reason, run_at=until, expires_at=max(expires_at, until + grace)
    )


def capability_problem(adapter: ChannelAdapter, row: Any, touchpoint: Any) -> str | None:
    """Why ``adapter`` cannot send this row's touchpoint, or None."""
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
