"""The outbox's background jobs: dispatch due deliveries, fan out cron
occurrences, reap leases nobody renewed, poll mass-send tasks."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from scheduler.jobs import Job, JobContext
from scheduler.outbox import service, tasks
from scheduler.outbox.dispatch import DispatchStats
from scheduler.outbox.recording import is_outage
from sopbot.clock import SystemClock
from sopbot.db import session_scope

log = logging.getLogger("sopbot.scheduler")

JOB_DISPATCH = "sopbot:dispatch"
JOB_PLAN = "sopbot:plan-cron"
JOB_REAP = "sopbot:reap-leases"
JOB_TASKS = "sopbot:poll-tasks"


async def dispatch(ctx: JobContext) -> DispatchStats:
    """Claim and send what is due; a database outage costs this tick only (what
    it claimed is given back by lease expiry, the pool reconnects).

    Rows that become due before the next tick are not left waiting for it: the
    job sleeps until the earliest of them and dispatches again, until nothing
    more is due within three quarters of a tick of when it started. Rows due
    at one instant are claimed and rendered ``prepare_ahead_seconds`` before
    it and handed to their channel at that instant (``Dispatcher.run_ahead``):
    a burst is late only by what marking, sending and recording it take."""
    dispatcher = ctx.dispatcher
    stats = DispatchStats()
    # Rows due in the last quarter of the interval wait for the next tick: the
    # job should have ended by then, or APScheduler skips that tick (and says so).
    until = ctx.clock.now() + timedelta(seconds=ctx.settings.tick_seconds * 0.75)
    ahead = timedelta(seconds=ctx.settings.prepare_ahead_seconds)
    try:
        while True:
            stats.add(await dispatcher.run_once())
            now = ctx.clock.now()
            if dispatcher.stopping or now >= until:
                break
            if not isinstance(ctx.clock, SystemClock):  # a clock tests drive by hand
                break
            wake = await asyncio.to_thread(dispatcher.next_run_at, now, until + ahead)
            if wake is None or dispatcher.stopping or wake - ahead >= until:
                break
            await _sleep_until(ctx, wake - ahead)
            if ahead and ctx.clock.now() < wake:
                early = await dispatcher.run_ahead(wake)
                stats.add(early)
                if not early.claimed and wake >= until:  # the next tick will do
                    break
            await _sleep_until(ctx, wake)
            if ctx.clock.now() < wake:  # frozen time: the next tick will do
                break
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("database unavailable during a dispatch tick: %s", exc)
        return stats
    ctx.heartbeat.record(stats)
    if ctx.metrics is not None:
        ctx.metrics.observe(stats)
    if stats.claimed:  # each batch has its own INFO line (scheduler.outbox.dispatch)
        log.debug("dispatched %s", dict(stats.outcomes))
    return stats


async def _sleep_until(ctx: JobContext, instant: datetime) -> None:
    seconds = (instant - ctx.clock.now()).total_seconds()
    if seconds > 0:
        await asyncio.sleep(seconds)


def plan_now(ctx: JobContext) -> service.PlanResult:
    with session_scope(ctx.engine) as session:
        return service.plan_cron(
            session,
            ctx.clock.now(),
            lookahead=timedelta(seconds=ctx.settings.plan_lookahead_seconds),
            catch_up=timedelta(days=ctx.settings.catch_up_days),
        )


async def plan(ctx: JobContext) -> service.PlanResult:
    return await asyncio.to_thread(plan_now, ctx)


async def reap(ctx: JobContext) -> dict[str, int]:
    reaped = await asyncio.to_thread(ctx.dispatcher.reap_expired_leases)
    if any(reaped.values()):
        log.warning("expired leases resolved: %s", reaped, extra={"reaped": reaped})
    if ctx.metrics is not None:
        ctx.metrics.observe_reap(reaped)
    return reaped


async def poll_tasks(ctx: JobContext) -> tasks.PollStats:
    """Resolve task-mode deliveries (staff-confirmed mass sends)."""
    return await tasks.poll_tasks(ctx.engine, ctx.clock, ctx.channels, ctx.settings)


JOBS = (
    Job(JOB_PLAN, lambda s: s.plan_interval_seconds, plan),
    Job(JOB_DISPATCH, lambda s: s.tick_seconds, dispatch),
    Job(JOB_TASKS, lambda s: s.task_poll_seconds, poll_tasks),
    # Leases are renewed every lease/3; reaping at lease/4 finds a dead worker's
    # rows within 1.25 leases.
    Job(JOB_REAP, lambda s: max(5.0, s.lease_seconds / 4), reap),
)
