"""Delivery policies: quiet hours and per-contact frequency caps.

Decisions here are pure functions of an instant, a zone and (for caps) the
target's recent sends, so the same rules run when due times are computed
(``scheduler.outbox.service``) and again at dispatch (``scheduler.outbox.dispatch``). The one
query, :func:`recent_sends`, counts what a target already received across all
templates.

A decision is ``send``, ``defer`` (with the instant it may go out) or ``skip``,
always with a reason a person can read; the dispatcher records it on the delivery.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, null, select, text, union_all
from sqlalchemy.engine import Connection
from sqlmodel import Session

from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.repository import DELIVERIES, chunked
from sop_templates.schemas import FrequencyCapSpec, QuietHoursSpec, TemplateSpec
from sop_templates.timing import get_zone, parse_duration, parse_hhmm
from sopbot.settings import Settings

Action = Literal["send", "defer", "skip"]
TargetKey = tuple[str, int]  # (target_kind, target_id)

_LOCAL = "%Y-%m-%d %H:%M"


def _local(value: datetime) -> str:
    # strftime is several times slower, and enrollment formats one reason per row.
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    until: datetime | None = None  # defer: the UTC instant it may go out
    reason: str | None = None


SEND = Decision("send")


# -- quiet hours -------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    """Local ``start``–``end``; wraps midnight when ``end <= start`` (22:00–08:00)."""

    start: time
    end: time
    policy: Literal["defer", "skip"] = "defer"

    @classmethod
    def from_spec(cls, spec: QuietHoursSpec) -> QuietHours | None:
        if spec.off or spec.start is None or spec.end is None:
            return None
        return cls(parse_hhmm(spec.start), parse_hhmm(spec.end), spec.policy)

    @property
    def label(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def __post_init__(self) -> None:
        # Naive times compare with ``local.time()`` (which carries no tzinfo).
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times, without a zone")

    def window_end(self, at: datetime, zone: ZoneInfo) -> datetime | None:
        """The UTC end of the quiet window ``at`` falls in, or None if it does not."""
        found = self._window(at, zone)
        return found[1] if found else None

    def _window(self, at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        # Hot path when due times are computed: (local ``at``, UTC end) or None.
        local = at.astimezone(zone)
        clock = local.time()
        if self.start < self.end:
            if not self.start <= clock < self.end:
                return None
            end_date = local.date()
        else:
            if self.end <= clock < self.start:
                return None
            end_date = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        end = datetime.combine(end_date, self.end, tzinfo=zone).astimezone(UTC)
        # An end inside a DST gap can resolve to before ``at``; it is over then.
        return (local, end) if end > at else None

    def decide(self, at: datetime, zone: ZoneInfo) -> Decision:
        found = self._window(at, zone)
        if found is None:
            return SEND
        local, end = found
        where = f"quiet hours {self.label} ({zone.key})"
        if self.policy == "skip":
            return Decision("skip", reason=f"{where}: {_local(local)} is inside, skipped by policy")
        return Decision(
            "defer",
            until=end,
            reason=f"{where}: deferred from {_local(local)} to {_local(end.astimezone(zone))}",
        )


# -- frequency caps ---------------------------------------------------------------

CapKind = Literal["day", "week", "month", "sliding"]

_PRESETS: dict[str, tuple[CapKind, int]] = {
    "wecom_daily": ("day", 1),
    "wecom_weekly": ("week", 7),
    "wecom_monthly_days": ("month", 0),  # 0: as many as the month has days
}


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``limit`` deliveries per target in a window, across all templates.

    Calendar windows (``day``/``week``/``month``, in the template's zone, weeks
    start on Monday) match WeCom's rules; ``sliding`` is a custom ``{max, per}``.
    """

    name: str
    kind: CapKind
    limit: int
    per: timedelta | None = None
    policy: Literal["defer", "skip"] = "defer"

    @classmethod
    def from_spec(cls, spec: FrequencyCapSpec) -> FrequencyCap | None:
        if spec.off:
            return None
        if spec.preset is not None:
            kind, limit = _PRESETS[spec.preset]
            return cls(spec.preset, kind, limit, policy=spec.policy)
        assert spec.max is not None and spec.per is not None
        return cls(
            f"{spec.max} per {spec.per}",
            "sliding",
            spec.max,
            per=parse_duration(spec.per),
            policy=spec.policy,
        )

    def window(self, at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime | None, int]:
        """``(start, end, limit)`` of the window ``at`` falls in (end None: sliding)."""
        if self.kind == "sliding":
            assert self.per is not None
            return at - self.per, None, self.limit
        local = at.astimezone(zone).date()
        if self.kind == "day":
            first, last = local, local + timedelta(days=1)
            limit = self.limit
        elif self.kind == "week":
            first = local - timedelta(days=local.weekday())
            last = first + timedelta(days=7)
            limit = self.limit
        else:
            days = calendar.monthrange(local.year, local.month)[1]
            first = local.replace(day=1)
            last = first + timedelta(days=days)
            limit = self.limit or days
        start = datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(last, time(0), tzinfo=zone).astimezone(UTC)
        return start, end, limit

    def lookback(self, at: datetime, zone: ZoneInfo) -> datetime:
        """The earliest send that can count for a delivery going out at ``at``."""
        return self.window(at, zone)[0]

    def decide(self, at: datetime, zone: ZoneInfo, sends: Sequence[datetime]) -> Decision:
        """``sends``: when the target already received something (in-flight ones as ``at``)."""
        start, end, limit = self.window(at, zone)
        if end is None:
            counted = sorted(s for s in sends if s > start)
        else:
            counted = sorted(s for s in sends if start <= s < end)
        if len(counted) < limit:
            return SEND
        period = {"day": "day", "week": "week", "month": "month"}.get(self.kind, "window")
        where = f"frequency cap {self.name}: {len(counted)} already sent this {period}"
        if self.policy == "skip":
            return Decision("skip", reason=f"{where}, skipped by policy")
        if end is not None:
            until = end
        else:
            assert self.per is not None
            # When the oldest of the last ``limit`` sends leaves the window.
            until = counted[len(counted) - limit] + self.per + timedelta(seconds=1)
        return Decision(
            "defer",
            until=until,
            reason=f"{where}, deferred to {until.astimezone(zone).strftime(_LOCAL)} ({zone.key})",
        )


# -- what applies to a template ---------------------------------------------------


@dataclass(frozen=True)
class WorkspaceDefaults:
    """Policies for templates that do not set their own (from ``Settings``)."""

    quiet: QuietHours | None = None
    cap: FrequencyCap | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkspaceDefaults:
        quiet = cap = None
        if settings.quiet_hours:
            spec = QuietHoursSpec.model_validate(settings.quiet_hours)
            quiet = QuietHours.from_spec(
                spec.model_copy(update={"policy": settings.quiet_hours_policy})
            )
        if settings.frequency_cap:
            cap_spec = FrequencyCapSpec.model_validate(settings.frequency_cap)
            cap = FrequencyCap.from_spec(
                cap_spec.model_copy(update={"policy": settings.frequency_cap_policy})
            )
        return cls(quiet, cap)


@dataclass(frozen=True)
class TemplatePolicy:
    zone: ZoneInfo
    quiet: QuietHours | None = None
    cap: FrequencyCap | None = None


def template_policy(
    spec: TemplateSpec, defaults: WorkspaceDefaults | None = None
) -> TemplatePolicy:
    """The quiet hours and cap a template's deliveries follow: its own, else the
    workspace's (``off`` in the template turns a workspace default off)."""
    defaults = defaults or WorkspaceDefaults()
    quiet = (
        QuietHours.from_spec(spec.quiet_hours) if spec.quiet_hours is not None else defaults.quiet
    )
    cap = (
        FrequencyCap.from_spec(spec.frequency_cap)
        if spec.frequency_cap is not None
        else defaults.cap
    )
    return TemplatePolicy(get_zone(spec.timezone), quiet, cap)


def quiet_hours_of(spec: TemplateSpec) -> QuietHours | None:
    """The template's own quiet hours (what enrollment can apply without settings)."""
    return QuietHours.from_spec(spec.quiet_hours) if spec.quiet_hours is not None else None


def local_zone(default: ZoneInfo, contact_zone: str | None) -> ZoneInfo:
    """A contact's own zone when it is known and valid, else the template's."""
    if contact_zone:
        try:
            return get_zone(contact_zone)
        except ValueError:
            return default
    return default


# -- counting a target's recent sends --------------------------------------------


@dataclass
class RecentSends:
    sent: dict[TargetKey, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    in_flight: dict[TargetKey, int] = field(default_factory=lambda: defaultdict(int))

    def of(self, key: TargetKey, now: datetime) -> list[datetime]:
        return [*self.sent.get(key, ()), *([now] * self.in_flight.get(key, 0))]


def recent_sends(
    session: Session | Connection, targets: Iterable[TargetKey], since: datetime
) -> RecentSends:
    """What each target received since ``since`` (``sent``, by ``sent_at``) and
    how many deliveries to it are being sent right now (``sending``).

    The first query is served by the partial index ``ix_deliveries_target_sent``
    (target_kind, target_id, sent_at WHERE sent_at IS NOT NULL); the second by
    ``(status, run_at)``: few rows are ``sending`` at any time.
    """
    out = RecentSends()
    by_kind: dict[str, list[int]] = defaultdict(list)
    for kind, target_id in set(targets):
        by_kind[kind].append(target_id)
    d = DELIVERIES.c
    sent_statuses = (DeliveryStatus.SENT, DeliveryStatus.DONE)  # done: a staff member sent it
    for kind, ids in by_kind.items():
        for chunk in chunked(sorted(ids), 900):
            # One statement, so one snapshot: read as two, a row another worker
            # moved from sending to sent between them would be seen in neither
            # (PostgreSQL's READ COMMITTED), and its target could get a second
            # message over the cap.
            sent = select(d.target_id, d.sent_at).where(
                d.target_kind == kind,
                d.target_id.in_(list(chunk)),
                d.sent_at.is_not(None),
                d.sent_at >= since,
                d.status.in_(sent_statuses),
            )
            sending = select(d.target_id, null().label("sent_at")).where(
                d.status == DeliveryStatus.SENDING,
                d.target_kind == kind,
                d.target_id.in_(list(chunk)),
            )
            for target_id, sent_at in session.execute(union_all(sent, sending)).all():
                if sent_at is None:
                    out.in_flight[(kind, target_id)] += 1
                else:
                    out.sent[(kind, target_id)].append(sent_at)
    return out


_LOCK_NAMESPACE = 0x5E0B << 40  # keeps our advisory-lock keys apart from anyone else's


def lock_targets(session: Session, targets: Iterable[TargetKey]) -> None:
    """Serialise cap decisions per target between workers (PostgreSQL; on SQLite
    the write transaction is already exclusive). Locks are taken in key order
    so two workers cannot deadlock, and released at commit."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted(
        {_LOCK_NAMESPACE + target_id * 2 + (kind == "group") for kind, target_id in targets}
    )
    if keys:
        stmt = text(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"
        ).bindparams(bindparam("keys"))
        session.execute(stmt, {"keys": keys})
