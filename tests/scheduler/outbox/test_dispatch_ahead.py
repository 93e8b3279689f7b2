"""Rows due at one instant a little ahead (a fixed-time send to many) are
claimed and rendered before it and handed to their channel at that instant,
never before; a stop while they wait gives them back; a worker that has not
timed a call yet does not take rows ahead (its channel may be slow, and other
workers could help send them). Time is a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from scheduler.outbox import jobs as outbox_jobs
from scheduler.runtime import SchedulerRuntime
from sopbot.clock import SystemClock

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
DUE = T0 + timedelta(seconds=1)  # after this tick's last wake (0.75 s), within 1.5 s ahead


class SteppedClock(SystemClock):
    """Real-time kind (the tick may wait on it), moved by the test's sleep; a
    hook sees each sleep first."""

    def __init__(self, start: datetime) -> None:
        self.instant = start
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def now(self) -> datetime:
        return self.instant

    async def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep()
        self.slept.append(seconds)
        self.instant += timedelta(seconds=seconds)


@pytest.fixture
def stepped(monkeypatch) -> SteppedClock:
    clock = SteppedClock(T0)
    monkeypatch.setattr(outbox_jobs.asyncio, "sleep", clock.sleep)
    return clock


def _sop(engine, name: str, anchor: datetime, n: int) -> int:
    spec = new_friend_spec(
        name=name,
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "{{ contact.name }}，你好"}],
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{name}_{i}", f"客户{i}", T0) for i in range(n)]
    enroll(engine, template_id, [(c, anchor) for c in contacts], T0)
    return template_id


def _prepared_at(runtime: SchedulerRuntime, clock: SteppedClock) -> list[datetime]:
    """Record when each batch is rendered."""
    seen: list[datetime] = []
    prepare = runtime.dispatcher._prepare

    def spy(rows, send_at=None):  # type: ignore[no-untyped-def]
        seen.append(clock.now())
        return prepare(rows, send_at)

    runtime.dispatcher._prepare = spy  # type: ignore[method-assign]
    return seen


async def test_a_burst_is_rendered_ahead_and_sent_at_its_instant(engine, settings, stepped):
    _sop(engine, "warm", T0, 2)  # due now: the worker times its channel on them
    burst = _sop(engine, "burst", DUE, 30)
    runtime = SchedulerRuntime(engine, stepped, settings)
    prepared = _prepared_at(runtime, stepped)
    stats = await runtime.dispatch_tick()
    assert stats.sent == 32
    assert prepared[0] == T0  # the warm-up
    assert prepared[1] < DUE  # the burst, rendered before its instant
    rows = deliveries(engine, template_id=burst)
    assert {d.status for d in rows} == {"sent"}
    assert {d.sent_at for d in rows} == {DUE}  # not a moment before
    assert sorted(m.delivery_id for m in mock_sends(engine)) == sorted(
        d.id for d in deliveries(engine)
    )  # each once


async def test_a_stop_while_they_wait_gives_them_back(engine, settings, stepped):
    _sop(engine, "warm", T0, 2)
    burst = _sop(engine, "burst", DUE, 30)
    runtime = SchedulerRuntime(engine, stepped, settings)
    prepared = _prepared_at(runtime, stepped)

    def stop_once_rendered() -> None:
        if len(prepared) > 1:
            runtime.dispatcher.stop()

    stepped.on_sleep = stop_once_rendered
    stats = await runtime.dispatch_tick()
    assert len(prepared) == 2 and stats.outcomes["released"] == 30  # rendered, then stopped
    rows = deliveries(engine, template_id=burst)
    assert {(d.status, d.attempts, d.lease_owner) for d in rows} == {("scheduled", 0, None)}
    assert len(mock_sends(engine)) == 2  # only the warm-up went out


async def test_a_worker_that_has_timed_no_call_takes_nothing_ahead(engine, settings, stepped):
    burst = _sop(engine, "burst", DUE, 30)
    runtime = SchedulerRuntime(engine, stepped, settings)
    stats = await runtime.dispatch_tick()
    assert stats.claimed == 0 and stepped.slept == []  # the next tick sends them
    assert {d.status for d in deliveries(engine, template_id=burst)} == {"scheduled"}


async def test_prepare_ahead_can_be_switched_off(engine, settings, stepped):
    _sop(engine, "warm", T0, 2)
    burst = _sop(engine, "burst", DUE, 30)
    runtime = SchedulerRuntime(
        engine, stepped, settings.model_copy(update={"prepare_ahead_seconds": 0})
    )
    stats = await runtime.dispatch_tick()
    assert stats.sent == 2
    assert {d.status for d in deliveries(engine, template_id=burst)} == {"scheduled"}
