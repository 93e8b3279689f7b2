"""What the template editor asks the engine: the timeline, the preview and the
test send — computed with the functions the scheduler itself uses.

* **timeline** — when each touchpoint fires for one target anchored at a sample
  time: ``due_at`` / ``cron_occurrences`` for the time, the enrollment rules for
  times already past, quiet hours (``policies.template_policy``, the template's
  own or the workspace default) and the frequency cap for this SOP's own sends.
  ``tests/scheduler/flows/test_authoring.py`` checks it against real enrollments.
* **preview** — every touchpoint rendered for a real target (loaded with
  ``audiences.render_targets``, as dispatch does) or the sample target.
* **test send** — one touchpoint, rendered for a chosen target, sent through the
  template's channel adapter outside the outbox and recorded in ``test_sends``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from audiences import service as audiences_service
from channels.base import ChannelError, OutboundMessage, ResultStatus
from channels.registry import ChannelPool
from scheduler.flows.membership import fixed_start
from scheduler.flows.models import TestSend
from scheduler.outbox import policies
from scheduler.outbox.dispatch import _capability_problem
from scheduler.outbox.material_links import MaterialSigner
from scheduler.outbox.models import DeliveryStatus
from sop_templates import service as templates_service
from sop_templates.rendering import RenderError, build_context, render_parts, sample_context
from sop_templates.schemas import TemplateSpec, TouchpointSpec
from sop_templates.timing import CronTiming, cron_occurrences, due_at, get_zone
from sopbot.clock import Clock
from sopbot.db import session_scope


class AuthoringError(ValueError):
    """A preview or test send that cannot be made; the message says why."""


# -- timeline -------------------------------------------------------------------------


@dataclass
class TimelineEntry:
    touchpoint: str
    position: int
    timing: str  # as written: +3h, day 2 20:00, cron 0 11 * * *
    kind: str
    mode: str
    due_at: datetime  # when the timing rule says (UTC)
    run_at: datetime  # when it would go out (UTC), after deferrals
    status: str  # scheduled (will go out) or skipped
    reason: str | None = None  # deferred by quiet hours / cap, or why skipped
    occurrence: int = 0  # cron: 1, 2, 3 ... of the occurrences shown

    @property
    def deferred(self) -> bool:
        return self.status == DeliveryStatus.SCHEDULED and self.run_at != self.due_at


@dataclass
class Timeline:
    anchor_at: datetime
    enrolled_at: datetime
    zone: str
    quiet_hours: str | None
    frequency_cap: str | None
    entries: list[TimelineEntry] = field(default_factory=list)


def anchor_for_sample(spec: TemplateSpec, sample: datetime) -> datetime:
    """The anchor a target joining (or being tagged) at ``sample`` gets."""
    return fixed_start(spec) if spec.anchor == "fixed" else sample


def timeline(
    spec: TemplateSpec,
    sample_at: datetime,
    *,
    defaults: policies.WorkspaceDefaults | None = None,
    cron_occurrences_shown: int = 3,
) -> Timeline:
    """When each touchpoint would fire for a target that joins (is tagged, is
    enrolled) at ``sample_at``. Pure: no database."""
    zone = get_zone(spec.timezone)
    policy = policies.template_policy(spec, defaults)
    anchor = anchor_for_sample(spec, sample_at)
    now = sample_at  # enrollment happens when the target joins
    entries: list[TimelineEntry] = []
    for position, tp in enumerate(spec.touchpoints):
        grace = timedelta(seconds=tp.grace_seconds)
        if isinstance(tp.timing, CronTiming):
            horizon = now + timedelta(days=400)
            for n, occurrence in enumerate(
                cron_occurrences(tp.timing, zone, now, horizon, limit=cron_occurrences_shown),
                start=1,
            ):
                entries.append(_entry(tp, position, occurrence, occurrence, n))
            continue
        due = due_at(tp.timing, anchor, zone)
        entry = _entry(tp, position, due, due)
        # The enrollment rules (scheduler.outbox.service.enroll) for times already past.
        if due < now:
            late_ok = tp.timing.kind == "offset" or tp.past_policy == "send"
            if not late_ok:
                entry.status, entry.reason = (
                    DeliveryStatus.SKIPPED,
                    "time already past when enrolled",
                )
            elif due + grace < now:
                entry.status = DeliveryStatus.SKIPPED
                entry.reason = "already past its grace period when enrolled"
            else:
                entry.reason = "due before enrollment: goes out at once"
        entries.append(entry)
    entries.sort(key=lambda e: (e.run_at, e.position))
    _apply_policies(entries, policy, now)
    entries.sort(key=lambda e: (e.run_at, e.position))
    return Timeline(
        anchor_at=anchor,
        enrolled_at=now,
        zone=zone.key,
        quiet_hours=policy.quiet.label if policy.quiet else None,
        frequency_cap=policy.cap.name if policy.cap else None,
        entries=entries,
    )


def _entry(
    tp: TouchpointSpec, position: int, due: datetime, run: datetime, occurrence: int = 0
) -> TimelineEntry:
    return TimelineEntry(
        touchpoint=tp.name,
        position=position,
        timing=tp.timing.describe(),
        kind=tp.timing.kind,
        mode=tp.mode,
        due_at=due,
        run_at=run,
        status=DeliveryStatus.SCHEDULED,
        occurrence=occurrence,
    )


def _apply_policies(
    entries: list[TimelineEntry], policy: policies.TemplatePolicy, enrolled_at: datetime
) -> None:
    """Quiet hours, then the frequency cap counting this SOP's own sends (as
    dispatch decides them one after another, in due order)."""
    sends: list[datetime] = []
    for entry in entries:
        if entry.status != DeliveryStatus.SCHEDULED:
            continue
        if policy.quiet is not None:
            decision = policy.quiet.decide(max(entry.run_at, enrolled_at), policy.zone)
            if decision.action == "skip":
                entry.status, entry.reason = DeliveryStatus.SKIPPED, decision.reason
                continue
            if decision.action == "defer" and decision.until is not None:
                entry.run_at, entry.reason = decision.until, decision.reason
        if policy.cap is not None:
            decision = policy.cap.decide(max(entry.run_at, enrolled_at), policy.zone, sends)
            if decision.action == "skip":
                entry.status, entry.reason = DeliveryStatus.SKIPPED, decision.reason
                continue
            if decision.action == "defer" and decision.until is not None:
                until, reason = decision.until, decision.reason
                if policy.quiet is not None:
                    end = policy.quiet.window_end(until, policy.zone)
                    if end is not None:
                        until, reason = end, f"{reason}, after quiet hours {policy.quiet.label}"
                entry.run_at, entry.reason = until, reason
        sends.append(max(entry.run_at, enrolled_at))


# -- preview --------------------------------------------------------------------------


@dataclass
class PreviewItem:
    touchpoint: str
    timing: str
    mode: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Preview:
    target_kind: str
    target: dict[str, Any]  # id, external_id, name (the sample has id 0)
    sample: bool
    items: list[PreviewItem] = field(default_factory=list)


def load_target(session: Session, target_kind: str, key: str | int) -> dict[str, Any]:
    """A contact or group as dispatch loads it for rendering (by id or external id)."""
    finder = (
        audiences_service.find_contact if target_kind == "contact" else audiences_service.find_group
    )
    found = finder(session, key)
    assert found.id is not None  # a stored row
    return audiences_service.render_targets(session, target_kind, [found.id])[found.id]


def _context(
    spec: TemplateSpec, tp: TouchpointSpec, target: dict[str, Any] | None
) -> dict[str, Any]:
    if target is None:
        return sample_context(spec, tp.name)
    return build_context(
        target_kind=spec.target,
        target=target,
        template_name=spec.name,
        touchpoint_name=tp.name,
        account=target.get("account"),
        extra={"due_at": None},
    )


def _content(tp: TouchpointSpec) -> list[dict[str, Any]]:
    # Exactly what publishing stores in ``touchpoints.content``.
    return [p.model_dump(mode="json") for p in tp.content]


def preview(session: Session, spec: TemplateSpec, target_key: str | int | None = None) -> Preview:
    """Render every touchpoint for a real target (``target_key``: id or external
    id of a contact or group, per the template's target) or the sample one."""
    target = load_target(session, spec.target, target_key) if target_key not in (None, "") else None
    shown = target or sample_context(spec)["target"]
    out = Preview(
        target_kind=spec.target,
        target={k: shown.get(k) for k in ("id", "external_id", "name", "status")},
        sample=target is None,
    )
    for tp in spec.touchpoints:
        item = PreviewItem(touchpoint=tp.name, timing=tp.timing.describe(), mode=tp.mode)
        try:
            item.parts = render_parts(_content(tp), _context(spec, tp, target))
        except RenderError as exc:
            item.error = str(exc)
        out.items.append(item)
    return out


# -- test send --------------------------------------------------------------------------


async def test_send(
    engine: Engine,
    channels: ChannelPool,
    clock: Clock,
    *,
    template_id: int,
    target_key: str | int,
    touchpoint: str | None = None,
    requested_by: int | None = None,
    requested_by_name: str = "",
    sign_materials: MaterialSigner | None = None,
) -> TestSend:
    """Send one touchpoint of the template's draft (default: the first) to one
    contact or group through the template's channel, now, and record it.

    It bypasses the outbox, quiet hours, caps and the channel's breaker: a person
    asked for it and watches the result."""

    def prepare() -> tuple[TestSend, OutboundMessage | None]:
        with session_scope(engine) as session:
            template = templates_service.get_template(session, template_id)
            spec = templates_service.parse_spec(template.draft)
            tp = _pick(spec, touchpoint)
            target = load_target(session, spec.target, target_key)
            row = TestSend(
                template_id=template_id,
                touchpoint_name=tp.name,
                target_kind=spec.target,
                target_id=target["id"],
                target_external_id=target["external_id"],
                channel=spec.channel,
                mode=tp.mode,
                parts=[],
                requested_by=requested_by,
                requested_by_name=requested_by_name,
                created_at=clock.now(),
            )
            problem = None
            if not audiences_service.is_active(target):
                problem = f"{spec.target} {target['external_id']} is {target['status']}"
            else:
                try:
                    row.parts = render_parts(_content(tp), _context(spec, tp, target))
                except RenderError as exc:
                    problem = f"content could not be rendered: {exc}"
            if problem:
                row.status, row.error, row.finished_at = "failed", problem, clock.now()
            session.add(row)
            session.flush()
            if problem:
                return row, None
            account = target.get("account") or {}
            message = OutboundMessage(
                delivery_id=-int(row.id),  # type: ignore[arg-type]  # negative: not an outbox row
                idempotency_key=f"sopbot-test{row.id}",
                target_kind=spec.target,
                target_external_id=target["external_id"],
                account_external_id=account.get("external_id"),
                parts=sign_materials(row.parts, clock.now()) if sign_materials else row.parts,
                mode=tp.mode,
                target_name=target.get("name"),
                template_name=spec.name,
                touchpoint_name=tp.name,
            )
            return row, message

    row, message = await asyncio.to_thread(prepare)
    if message is None:
        return row
    status, error, provider_id = "failed", None, None
    try:
        adapter = channels.get(row.channel)
        problem = _capability_problem(
            adapter,
            SimpleNamespace(mode=row.mode, target_kind=row.target_kind, channel=row.channel),
            SimpleNamespace(content=row.parts),
        )
        if problem:
            error = problem
        else:
            [result] = await adapter.send([message])
            provider_id = result.provider_message_id
            if result.status == ResultStatus.SENT:
                status = "sent"
            else:
                error = result.error or result.status.value
    except ChannelError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the operator sees the adapter's failure
        error = f"{type(exc).__name__}: {exc}"

    def finish() -> TestSend:
        with session_scope(engine) as session:
            stored = session.get(TestSend, row.id)
            assert stored is not None
            stored.status, stored.error = status, error
            stored.provider_message_id, stored.finished_at = provider_id, clock.now()
            session.add(stored)
            session.flush()
            return stored

    return await asyncio.to_thread(finish)


def _pick(spec: TemplateSpec, name: str | None) -> TouchpointSpec:
    if not name:
        return spec.touchpoints[0]
    for tp in spec.touchpoints:
        if tp.name == name:
            return tp
    raise AuthoringError(f"the draft has no touchpoint named {name!r}")


def test_sends(session: Session, template_id: int, limit: int = 20) -> list[TestSend]:
    return list(
        session.exec(
            select(TestSend)
            .where(TestSend.template_id == template_id)
            .order_by(col(TestSend.id).desc())
            .limit(limit)
        ).all()
    )


test_send.__test__ = False  # type: ignore[attr-defined]
test_sends.__test__ = False  # type: ignore[attr-defined]
