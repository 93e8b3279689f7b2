"""Worker heartbeats: who is alive, what each has done, the backlog and the
oldest overdue delivery (scheduler.operations.heartbeat)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from factories import add_contact, enroll, new_friend_spec, publish
from sqlmodel import Session

from scheduler.operations import heartbeat
from scheduler.runtime import SchedulerRuntime

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def _summary(engine, clock, settings, **kw) -> heartbeat.OpsSummary:
    with Session(engine) as session:
        return heartbeat.ops_summary(
            session, clock.now(), timedelta(seconds=settings.worker_stale_seconds), **kw
        )


async def test_worker_is_live_while_it_beats_then_stale_then_back(engine, clock, runtime, settings):
    clock.set(T0)
    await runtime.heartbeat_tick()
    summary = _summary(engine, clock, settings)
    assert summary.live_workers == 1
    (worker,) = summary.workers
    assert (worker.id, worker.role, worker.live) == ("test-worker", "serve", True)
    assert worker.started_at == T0 and worker.pid > 0

    clock.advance(seconds=settings.worker_stale_seconds + 1)  # it stopped beating (crashed)
    assert _summary(engine, clock, settings).live_workers == 0
    (gone,) = _summary(engine, clock, settings, include_gone=True).workers
    assert not gone.live and gone.seen_seconds_ago == settings.worker_stale_seconds + 1

    await runtime.heartbeat_tick()
    assert _summary(engine, clock, settings).live_workers == 1


async def test_graceful_stop_leaves_the_live_list_at_once(engine, clock, runtime, settings):
    clock.set(T0)
    await runtime.start()
    await runtime.shutdown()
    summary = _summary(engine, clock, settings, include_gone=True)
    assert summary.live_workers == 0
    assert summary.workers[0].stopped_at == T0


async def test_heartbeat_reports_what_the_worker_dispatched(engine, clock, runtime, settings):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(3)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)
    await runtime.dispatch_tick()  # the three welcome messages
    await runtime.heartbeat_tick()
    (worker,) = _summary(engine, clock, settings).workers
    assert (worker.claimed_total, worker.sent_total, worker.failed_total) == (3, 3, 0)


async def test_two_workers_each_have_their_row(engine, clock, settings):
    clock.set(T0)
    for name in ("host-a:1", "host-b:2"):
        rt = SchedulerRuntime(
            engine, clock, settings.model_copy(update={"worker_id": name}), role="worker"
        )
        await rt.heartbeat_tick()
        await rt.http.aclose()
    summary = _summary(engine, clock, settings)
    assert sorted(w.id for w in summary.workers) == ["host-a:1", "host-b:2"]
    assert {w.role for w in summary.workers} == {"worker"}


async def test_rows_of_long_gone_workers_are_forgotten(engine, clock, runtime, settings):
    clock.set(T0)
    other = SchedulerRuntime(engine, clock, settings.model_copy(update={"worker_id": "old:1"}))
    await other.heartbeat_tick()
    await other.http.aclose()
    clock.advance(days=8)
    await runtime.heartbeat_tick()
    ids = [w.id for w in _summary(engine, clock, settings, include_gone=True).workers]
    assert ids == ["test-worker"]


def test_backlog_counts_due_rows_and_names_the_oldest(engine, clock, settings):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    early = add_contact(engine, "wm_early", "早", T0 - timedelta(minutes=30))
    late = add_contact(engine, "wm_late", "晚", T0 - timedelta(minutes=5))
    enroll(engine, template_id, [(early, T0 - timedelta(minutes=30))], T0)
    enroll(engine, template_id, [(late, T0 - timedelta(minutes=5))], T0)

    summary = _summary(engine, clock, settings)
    # Only the +0 welcome messages are due; +3h and day-2 ones are not yet.
    assert summary.backlog == 2
    assert summary.oldest_overdue is not None
    assert summary.oldest_overdue.due_at == T0 - timedelta(minutes=30)
    assert summary.oldest_overdue.overdue_seconds == 30 * 60

    clock.advance(hours=4)  # now the +3h ones are due too
    assert _summary(engine, clock, settings).backlog == 4


def test_empty_outbox_has_no_backlog(engine, clock, settings):
    summary = _summary(engine, clock, settings)
    assert (summary.backlog, summary.oldest_overdue, summary.live_workers) == (0, None, 0)


async def test_a_late_interval_beat_cannot_undo_the_stop(engine, clock, runtime, settings):
    clock.set(T0)
    await runtime.heartbeat_tick()
    runtime.heartbeat.beat(stopped=True)
    clock.advance(seconds=1)
    await runtime.heartbeat_tick()  # the interval job, finishing after shutdown's beat
    (worker,) = _summary(engine, clock, settings, include_gone=True).workers
    assert worker.stopped_at == T0 and not worker.live
