"""A dispatch tick does not leave rows that fall due before the next tick
waiting for it: it sleeps until the earliest of them and sends them then.
Time is a clock the test moves; nothing is slept on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from scheduler.outbox import jobs as outbox_jobs
from scheduler.runtime import SchedulerRuntime
from sopbot.clock import SystemClock

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


class SteppedClock(SystemClock):
    """Real-time kind (the tick may wait on it), moved by the test's sleep."""

    def __init__(self, start: datetime) -> None:
        self.instant = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.instant

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.instant += timedelta(seconds=seconds)


def _enroll_due_at(engine, anchor: datetime, n: int = 3) -> None:
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(n)]
    enroll(engine, template_id, [(c, anchor) for c in contacts], T0)


@pytest.fixture
def stepped(monkeypatch) -> SteppedClock:
    clock = SteppedClock(T0)
    monkeypatch.setattr(outbox_jobs.asyncio, "sleep", clock.sleep)
    return clock


async def test_rows_due_within_the_tick_are_sent_when_due(engine, settings, stepped):
    _enroll_due_at(engine, T0 + timedelta(milliseconds=400))
    runtime = SchedulerRuntime(engine, stepped, settings)
    stats = await runtime.dispatch_tick()
    assert stats.sent == 3
    assert stepped.slept == [pytest.approx(0.4)]
    assert len(mock_sends(engine)) == 3
    assert {d.sent_at for d in deliveries(engine)} == {T0 + timedelta(milliseconds=400)}


async def test_rows_due_after_the_next_tick_wait_for_it(engine, settings, stepped):
    _enroll_due_at(engine, T0 + timedelta(seconds=settings.tick_seconds + 0.5))
    runtime = SchedulerRuntime(engine, stepped, settings)
    stats = await runtime.dispatch_tick()
    assert stats.sent == 0 and stepped.slept == []
    assert {d.status for d in deliveries(engine)} == {"scheduled"}


async def test_a_stopping_dispatcher_does_not_wait(engine, settings, stepped):
    _enroll_due_at(engine, T0 + timedelta(milliseconds=400))
    runtime = SchedulerRuntime(engine, stepped, settings)
    runtime.dispatcher.stop()
    await runtime.dispatch_tick()
    assert stepped.slept == []


async def test_a_hand_driven_clock_never_waits(engine, settings, clock, monkeypatch):
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(outbox_jobs.asyncio, "sleep", no_sleep)
    _enroll_due_at(engine, clock.now() + timedelta(milliseconds=400))
    runtime = SchedulerRuntime(engine, clock, settings)
    assert (await runtime.dispatch_tick()).sent == 0
    assert slept == []
