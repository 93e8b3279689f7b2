"""Leases hold while work is in flight, a stop gives back what was not handed
over, and outcomes survive a database outage. Time is the injected clock; a
channel call is held open by the test, not slept on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from scheduler.outbox import recording, transitions
from scheduler.outbox.leases import Pace
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def _due(engine, n: int) -> list[int]:
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1d"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(n)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    return sorted(d.id for d in deliveries(engine))


class HeldChannel:
    """Wraps the mock adapter: each call waits until the test lets it go."""

    def __init__(self, adapter, max_batch: int | None = None) -> None:
        self.adapter = adapter
        self.send = adapter.send
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.calls: list[list[int]] = []
        adapter.send = self._held
        if max_batch is not None:
            adapter.capabilities = replace(adapter.capabilities, max_batch=max_batch)

    async def _held(self, messages):
        self.calls.append([m.delivery_id for m in messages])
        self.entered.set()
        await self.go.wait()
        return await self.send(messages)


class Ticks:
    """The lease keeper's sleep: returns when the test says a third of a lease passed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.queue.get()


async def _until(condition, what: str) -> None:
    # Waits on worker threads of this event loop, not on time.
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _statuses(engine) -> dict[int, str]:
    return {d.id: d.status for d in deliveries(engine)}


async def test_a_slow_call_keeps_its_lease_and_is_neither_reaped_nor_resent(
    engine, clock, runtime, settings
):
    clock.set(T0)
    (row,) = _due(engine, 1)
    channel = HeldChannel(runtime.channels.get("mock"))
    ticks = Ticks()
    runtime.dispatcher.leases.sleep = ticks.sleep
    tick = asyncio.create_task(runtime.dispatch_tick())
    await asyncio.wait_for(channel.entered.wait(), 10)
    assert _statuses(engine) == {row: "sending"}

    # Five leases pass while the channel works; the worker renews every third.
    for _ in range(15):
        clock.advance(seconds=settings.lease_seconds / 3)
        ticks.queue.put_nowait(None)
        await _until(lambda: ticks.queue.empty(), "a renewal")
        await _until(
            lambda: deliveries(engine)[0].lease_expires_at > clock.now(), "the lease renewed"
        )
        assert await runtime.reap_tick() == {"released": 0, "resent": 0, "unknown": 0}

    channel.go.set()
    stats = await tick
    assert stats.sent == 1
    assert _statuses(engine) == {row: "sent"}
    assert len(mock_sends(engine)) == 1


async def test_a_lease_expires_only_when_nobody_renews_it(engine, clock, runtime, settings):
    clock.set(T0)
    ids = _due(engine, 3)
    dispatcher = runtime.dispatcher
    claimed = dispatcher.claim(10)
    assert sorted(r.id for r in claimed) == ids
    for _ in range(4):  # renewed before each expiry: the reaper finds nothing
        clock.advance(seconds=settings.lease_seconds * 0.9)
        assert dispatcher.leases.renew(ids) == 3
        assert (await runtime.reap_tick())["released"] == 0
    clock.advance(seconds=settings.lease_seconds + 1)  # the worker stopped renewing
    assert (await runtime.reap_tick())["released"] == 3
    assert set(_statuses(engine).values()) == {"scheduled"}
    assert dispatcher.leases.renew(ids) == 0  # not ours any more


async def test_stop_gives_back_every_row_not_yet_handed_to_the_channel(
    engine, clock, runtime, settings
):
    clock.set(T0)
    ids = _due(engine, 5)
    settings.send_concurrency = 1
    settings.dispatch_pipeline = 1  # one call in flight in all
    dispatcher = runtime.dispatcher
    channel = HeldChannel(runtime.channels.get("mock"), max_batch=1)
    tick = asyncio.create_task(runtime.dispatch_tick())
    await asyncio.wait_for(channel.entered.wait(), 10)
    # One call in the channel, the next one marked and in line; the other
    # three wait their turn, still claimed.
    await _until(lambda: list(_statuses(engine).values()).count("sending") == 2, "next in line")
    assert sorted(_statuses(engine).values()) == ["claimed"] * 3 + ["sending"] * 2

    dispatcher.stop()
    channel.go.set()
    stats = await tick
    statuses = _statuses(engine)
    (handed,) = channel.calls
    assert statuses == {i: "sent" if i in handed else "scheduled" for i in ids}
    assert stats.outcomes["released"] == 4
    assert all(d.lease_owner is None for d in deliveries(engine))
    assert {d.attempts for d in deliveries(engine) if d.status == "scheduled"} == {0}
    assert len(mock_sends(engine)) == 1


def test_a_worker_claims_no_more_than_it_can_start_within_a_lease():
    pace = Pace(lease_seconds=20, concurrency=3)
    # Nothing observed yet: a few rounds of its calls, not a whole batch that
    # one worker would hold while the others idle.
    assert pace.claim_limit(500) == 3 * Pace.UNTIMED_ROUNDS
    pace.observe(2.0, 1)  # a webhook answering in 2 s, one message per call
    # 3 calls at a time, 2 s each, within a third of the 20 s lease: 10
    assert pace.claim_limit(500) == 10
    fast = Pace(lease_seconds=120, concurrency=8)
    fast.observe(0.02, 1)
    assert fast.claim_limit(500) == 500


class FailingSessions:
    """``session_scope`` that fails ``n`` times as a database restart does."""

    def __init__(self, n: int, before_failing=None) -> None:
        self.left = n
        self.tries = 0
        self.before_failing = before_failing

    @contextlib.contextmanager
    def __call__(self, engine, **kw):
        self.tries += 1
        if self.left:
            self.left -= 1
            if self.before_failing is not None:
                self.before_failing()
                self.before_failing = None
            raise OperationalError(
                "UPDATE deliveries", None, Exception("the database system is starting up")
            )
        with session_scope(engine, **kw) as session:
            yield session


async def test_outcomes_are_recorded_through_a_database_restart(
    engine, clock, runtime, monkeypatch, caplog
):
    clock.set(T0)
    ids = _due(engine, 3)
    failing = FailingSessions(6)  # about 6 s of backoff: longer than one reconnect
    monkeypatch.setattr(recording, "session_scope", failing)
    waits: list[float] = []
    runtime.dispatcher._sleep = waits.append
    with caplog.at_level(logging.WARNING):
        stats = await runtime.dispatch_tick()
    assert stats.sent == 3
    assert _statuses(engine) == {i: "sent" for i in ids}
    assert failing.tries == 7 and len(waits) == 6
    assert "database unavailable while recording 3 outcomes" in caplog.text
    assert "stopped" not in caplog.text


async def test_a_late_outcome_resolves_rows_reaped_during_a_long_outage(
    engine, clock, runtime, settings, monkeypatch
):
    """Down longer than a lease: another worker reaps the rows to unknown; the
    owner's outcome, once the database is back, is the truth."""
    clock.set(T0)
    ids = _due(engine, 2)

    def another_worker_reaps() -> None:
        with Session(engine) as session, session.begin():
            later = clock.now() + timedelta(seconds=settings.lease_seconds + 1)
            assert transitions.reap_sending(session, now=later) == 2

    monkeypatch.setattr(recording, "session_scope", FailingSessions(3, another_worker_reaps))
    runtime.dispatcher._sleep = lambda seconds: None
    stats = await runtime.dispatch_tick()
    assert stats.sent == 2
    rows = {d.id: d for d in deliveries(engine)}
    assert {i: rows[i].status for i in ids} == {i: "sent" for i in ids}
    assert {i: rows[i].provider_message_id for i in ids} == {i: f"mock-{i}" for i in ids}
    assert all(rows[i].reason is None for i in ids)


async def test_an_outage_longer_than_the_budget_leaves_the_rows_to_the_reaper(
    engine, clock, runtime, monkeypatch
):
    clock.set(T0)
    _due(engine, 1)
    monkeypatch.setattr(recording, "session_scope", FailingSessions(10_000))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    runtime.dispatcher._monotonic = lambda: now[0]
    runtime.dispatcher._sleep = sleep
    stats = await runtime.dispatch_tick()  # the tick gives up, does not crash the job
    assert stats.claimed == 0
    assert now[0] >= 60 - 5  # waited about a lease (60 s in the test settings)
    assert _statuses(engine) == {deliveries(engine)[0].id: "sending"}


@pytest.fixture(autouse=True)
def _fast_renewal_off(runtime):
    """Renewal only when a test drives it (the real interval is lease/3)."""

    async def never(seconds: float) -> None:
        await asyncio.Event().wait()

    runtime.dispatcher.leases.sleep = never
