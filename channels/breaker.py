"""Circuit breaker per channel instance, with its state in the database so every
worker and the API see the same thing.

    closed ──threshold consecutive failures──► open ──cool-down over──► half_open
      ▲                                          ▲                          │ one trial send
      └──────────────── trial send succeeded ────┼──────────────────────────┤
                                                 └── trial send failed ─────┘

A failure is a retryable result (timeout, 5xx, rate limit) or an adapter that
raised; a permanent error about one message (bad content, unknown recipient) says
nothing about the channel and is not counted. Any success closes the breaker.

While open, the dispatcher does not call the channel: due deliveries go back to
``scheduled`` with the breaker's reason and come back when it half-opens, so a
dead channel does not burn through the backlog's retry attempts. When the
cool-down is over, exactly one worker wins the trial send (an atomic UPDATE);
the others wait ``probe_wait`` and look again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.models import BreakerState, ChannelBreaker
from sopbot.db import rowcount, session_scope
from sopbot.sql import insert_of

BREAKERS = ChannelBreaker.__table__  # type: ignore[attr-defined]
_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    threshold: int = 5
    cooldown: timedelta = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Admission:
    """What the dispatcher may send on a channel right now."""

    allow: int | None  # None: everything; 0: nothing; 1: one trial send
    until: datetime | None = None  # when held messages should be tried again
    reason: str | None = None  # recorded on held deliveries
    probe: bool = False  # this worker owns the half-open trial send

    @property
    def open(self) -> bool:
        return self.allow == 0


ADMIT_ALL = Admission(None)


class BreakerView(BaseModel):
    """A breaker as the API and the pages show it."""

    model_config = ConfigDict(frozen=True)

    instance: str
    state: str = Field(description="closed / open / half_open")
    consecutive_failures: int
    threshold: int
    cooldown_seconds: float
    trips: int
    opened_at: datetime | None
    open_until: datetime | None
    last_error: str | None
    updated_at: datetime | None


def _row_dict(row: Any | None, instance: str) -> dict[str, Any]:
    if row is None:
        return {
            "instance": instance,
            "state": BreakerState.CLOSED,
            "consecutive_failures": 0,
            "trips": 0,
            "opened_at": None,
            "open_until": None,
            "probe_owner": None,
            "probe_expires_at": None,
            "last_error": None,
            "updated_at": None,
        }
    return dict(row._mapping)


class CircuitBreakers:
    """Reads and moves breaker states. ``owner`` names this worker's trial sends."""

    def __init__(
        self,
        engine: Engine,
        owner: str,
        *,
        probe_wait: timedelta = timedelta(seconds=10),
        probe_lease: timedelta = timedelta(seconds=120),
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.probe_wait = probe_wait
        self.probe_lease = probe_lease

    # -- reading -------------------------------------------------------------------

    def states(self, session: Session, instances: Iterable[str]) -> dict[str, dict[str, Any]]:
        names = sorted(set(instances))
        found = {
            row.instance: row
            for row in session.execute(select(BREAKERS).where(BREAKERS.c.instance.in_(names))).all()
        }
        return {name: _row_dict(found.get(name), name) for name in names}

    def view(self, session: Session, instance: str, config: BreakerConfig) -> BreakerView:
        state = self.states(session, [instance])[instance]
        return BreakerView(
            instance=instance,
            state=state["state"],
            consecutive_failures=state["consecutive_failures"],
            threshold=config.threshold,
            cooldown_seconds=config.cooldown.total_seconds(),
            trips=state["trips"],
            opened_at=state["opened_at"],
            open_until=state["open_until"],
            last_error=state["last_error"],
            updated_at=state["updated_at"],
        )

    # -- admission (before sending) ---------------------------------------------

    def admit(self, state: dict[str, Any], now: datetime) -> Admission:
        """Decide from a state read this tick; may take the half-open trial send."""
        current = state["state"]
        name = state["instance"]
        if current == BreakerState.CLOSED:
            return ADMIT_ALL
        cause = f" (last error: {state['last_error']})" if state.get("last_error") else ""
        if current == BreakerState.OPEN and state["open_until"] and state["open_until"] > now:
            return Admission(
                0,
                until=state["open_until"],
                reason=(
                    f"channel {name!r} paused: circuit breaker open until "
                    f"{state['open_until']:%Y-%m-%d %H:%M:%S} UTC after "
                    f"{state['consecutive_failures']} consecutive failures{cause}"
                ),
            )
        if self._take_probe(name, now):
            return Admission(
                1,
                until=now + self.probe_wait,
                reason=f"channel {name!r} half-open: waiting for one trial send{cause}",
                probe=True,
            )
        return Admission(
            0,
            until=now + self.probe_wait,
            reason=f"channel {name!r} half-open: another worker is making the trial send{cause}",
        )

    def _take_probe(self, instance: str, now: datetime) -> bool:
        b = BREAKERS.c
        with session_scope(self.engine) as session:
            taken = rowcount(
                session.execute(
                    BREAKERS.update()
                    .where(
                        b.instance == instance,
                        or_(
                            and_(b.state == BreakerState.OPEN, b.open_until <= now),
                            and_(
                                b.state == BreakerState.HALF_OPEN,
                                or_(b.probe_expires_at.is_(None), b.probe_expires_at < now),
                            ),
                        ),
                    )
                    .values(
                        state=BreakerState.HALF_OPEN,
                        probe_owner=self.owner,
                        probe_expires_at=now + self.probe_lease,
                        updated_at=now,
                    )
                )
            )
        return bool(taken)

    # -- recording (after sending) --------------------------------------------------

    def record(
        self,
        instance: str,
        *,
        successes: int,
        failures: int,
        error: str | None,
        now: datetime,
        config: BreakerConfig,
    ) -> str:
        """Feed one channel call's results in; returns the state afterwards."""
        if not successes and not failures:
            return self._current(instance)
        with session_scope(self.engine, immediate=True) as session:
            state = self._locked(session, instance, now)
            values: dict[str, Any] = {"updated_at": now}
            if successes:
                values.update(
                    state=BreakerState.CLOSED,
                    consecutive_failures=0,
                    open_until=None,
                    probe_owner=None,
                    probe_expires_at=None,
                )
            else:
                count = state["consecutive_failures"] + failures
                values.update(
                    consecutive_failures=count, last_error=(error or "")[:_ERROR_CHARS] or None
                )
                half_open_failed = state["state"] == BreakerState.HALF_OPEN
                tripped = state["state"] == BreakerState.CLOSED and count >= config.threshold
                if half_open_failed or tripped:
                    values.update(
                        state=BreakerState.OPEN,
                        opened_at=now,
                        open_until=now + config.cooldown,
                        trips=state["trips"] + 1,
                        probe_owner=None,
                        probe_expires_at=None,
                    )
            session.execute(
                BREAKERS.update().where(BREAKERS.c.instance == instance).values(**values)
            )
            return str(values.get("state", state["state"]))

    def _locked(self, session: Session, instance: str, now: datetime) -> dict[str, Any]:
        session.execute(
            insert_of(session, BREAKERS)
            .values(**{**_row_dict(None, instance), "updated_at": now})
            .on_conflict_do_nothing()
        )
        # a row lock on PostgreSQL; SQLite's write lock is the caller's BEGIN IMMEDIATE
        stmt = select(BREAKERS).where(BREAKERS.c.instance == instance).with_for_update()
        return dict(session.execute(stmt).one()._mapping)

    def _current(self, instance: str) -> str:
        with Session(self.engine) as session:
            return str(self.states(session, [instance])[instance]["state"])

    # -- operator actions ---------------------------------------------------------

    def reset(self, instance: str, now: datetime) -> None:
        """Close the breaker by hand (the operator fixed the channel)."""
        with session_scope(self.engine, immediate=True) as session:
            self._locked(session, instance, now)
            session.execute(
                BREAKERS.update()
                .where(BREAKERS.c.instance == instance)
                .values(
                    state=BreakerState.CLOSED,
                    consecutive_failures=0,
                    open_until=None,
                    probe_owner=None,
                    probe_expires_at=None,
                    updated_at=now,
                )
            )

    def trip(self, instance: str, now: datetime, until: datetime, reason: str) -> None:
        """Open the breaker by hand: pause a channel until ``until``."""
        with session_scope(self.engine, immediate=True) as session:
            state = self._locked(session, instance, now)
            session.execute(
                BREAKERS.update()
                .where(BREAKERS.c.instance == instance)
                .values(
                    state=BreakerState.OPEN,
                    opened_at=now,
                    open_until=until,
                    trips=state["trips"] + 1,
                    last_error=reason[:_ERROR_CHARS],
                    probe_owner=None,
                    probe_expires_at=None,
                    updated_at=now,
                )
            )
