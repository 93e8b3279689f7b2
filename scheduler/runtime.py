"""The APScheduler side: an in-process clock that drives dispatch, cron fan-out
and lease reaping. APScheduler holds no send jobs; the database is the source of
truth, so its jobs live in the memory store with fixed ids and every process may
run them (claims are atomic in the database)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import Any

import httpx
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from channels.base import AdapterContext
from channels.http import channel_http_client
from channels.registry import ChannelPool
from scheduler.analytics.retention import RollupResult, roll_up
from scheduler.operations.heartbeat import Heartbeat
from scheduler.operations.metrics import DispatchMetrics
from scheduler.outbox import service, tasks
from scheduler.outbox.dispatch import Dispatcher, DispatchStats
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.scheduler")

JOB_DISPATCH = "sopbot:dispatch"
JOB_PLAN = "sopbot:plan-cron"
JOB_REAP = "sopbot:reap-leases"
JOB_TASKS = "sopbot:poll-tasks"
JOB_HEARTBEAT = "sopbot:heartbeat"
JOB_INBOX = "sopbot:apply-inbox"
JOB_ROLLUP = "sopbot:rollup"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def build_channel_pool(engine: Engine, clock: Clock, http: httpx.AsyncClient) -> ChannelPool:
    return ChannelPool(
        engine,
        lambda name: AdapterContext(http=http, engine=engine, clock=clock, instance_name=name),
    )


class SchedulerRuntime:
    """Owns the APScheduler instance, the dispatcher and the channel pool."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
        channels: ChannelPool | None = None,
        *,
        role: str = "serve",
        metrics: DispatchMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.http = http or channel_http_client()
        self.channels = channels or build_channel_pool(engine, clock, self.http)
        self.worker_id = settings.worker_id or default_worker_id()
        self.dispatcher = Dispatcher(engine, clock, self.channels, settings, self.worker_id)
        # Heartbeat row in ``workers`` (scheduler.operations.heartbeat) and this process's
        # dispatch metrics (scheduler.operations.metrics), when the owner keeps a registry.
        self.heartbeat = Heartbeat(engine, clock, self.worker_id, role=role)
        self.metrics = metrics
        self.scheduler: AsyncIOScheduler | None = None
        # Held while a dispatch tick runs, so shutdown can wait for it instead of
        # cancelling it halfway (a claim in a worker thread cannot be cancelled).
        self._dispatching = asyncio.Lock()
        self.last_dispatch: DispatchStats | None = None

    # -- jobs (each safe to run concurrently in many processes) -----------------

    async def dispatch_tick(self) -> DispatchStats:
        try:
            async with self._dispatching:
                stats = await self.dispatcher.run_once()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A dropped connection (database restart, failover): what this tick
            # claimed is reaped when its lease expires; the pool reconnects.
            log.warning("database connection lost during a dispatch tick: %s", exc.orig)
            return DispatchStats()
        self.last_dispatch = stats
        self.heartbeat.record(stats)
        if self.metrics is not None:
            self.metrics.observe(stats)
        if stats.claimed:  # each batch has its own INFO line (scheduler.outbox.dispatch)
            log.debug("dispatched %s", dict(stats.outcomes))
        return stats

    async def plan_tick(self) -> service.PlanResult:
        return await asyncio.to_thread(self.plan_now)

    def plan_now(self) -> service.PlanResult:
        with session_scope(self.engine) as session:
            return service.plan_cron(
                session,
                self.clock.now(),
                lookahead=timedelta(seconds=self.settings.plan_lookahead_seconds),
                catch_up=timedelta(days=self.settings.catch_up_days),
            )

    async def inbox_tick(self) -> Any:
        """Apply stored audience events (WeCom callbacks) not yet applied, so an
        event survives a crash between the callback's reply and its processing."""
        return await asyncio.to_thread(self.apply_inbox_now)

    def apply_inbox_now(self) -> Any:
        from scheduler.flows import membership

        with session_scope(self.engine) as session:
            return membership.apply_pending(session, self.clock.now())

    async def reap_tick(self) -> dict[str, int]:
        reaped = await asyncio.to_thread(self.dispatcher.reap_expired_leases)
        if any(reaped.values()):
            log.warning("expired leases resolved: %s", reaped, extra={"reaped": reaped})
        if self.metrics is not None:
            self.metrics.observe_reap(reaped)
        return reaped

    async def heartbeat_tick(self) -> None:
        """Tell the database this process is alive (``workers`` row)."""
        await asyncio.to_thread(self.heartbeat.beat)

    async def rollup_tick(self) -> RollupResult:
        """Add newly finished deliveries to the statistics rollups, so a
        template's report reads a few hourly rows instead of every delivery.
        Workers may all run it: the rollup watermark is locked while it moves."""
        return await asyncio.to_thread(roll_up, self.engine, self.clock, self.settings)

    async def poll_tasks_tick(self) -> tasks.PollStats:
        """Resolve task-mode deliveries (staff-confirmed mass sends)."""
        return await tasks.poll_tasks(self.engine, self.clock, self.channels, self.settings)

    # -- lifecycle ---------------------------------------------------------------------

    def build_scheduler(self) -> AsyncIOScheduler:
        """The APScheduler instance with our jobs, configured carefully:
        memory store only, fixed ids, replace_existing, max_instances=1,
        coalesce and an explicit misfire grace time (its default of 1 s silently
        drops a late run)."""
        scheduler = AsyncIOScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": AsyncIOExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            timezone="UTC",
        )
        settings = self.settings
        jobs: list[tuple[str, Any, float]] = [  # (id, coroutine, interval in seconds)
            (JOB_PLAN, self.plan_tick, settings.plan_interval_seconds),
            (JOB_DISPATCH, self.dispatch_tick, settings.tick_seconds),
            (JOB_TASKS, self.poll_tasks_tick, settings.task_poll_seconds),
            (JOB_INBOX, self.inbox_tick, 5.0),
            (JOB_ROLLUP, self.rollup_tick, settings.rollup_interval_seconds),
            (JOB_HEARTBEAT, self.heartbeat_tick, settings.heartbeat_seconds),
            (JOB_REAP, self.reap_tick, max(5.0, settings.lease_seconds / 4)),
        ]
        for job_id, tick, seconds in jobs:
            if seconds > 0:  # 0 switches a job off (the rollup)
                scheduler.add_job(
                    tick,
                    "interval",
                    seconds=seconds,
                    id=job_id,
                    replace_existing=True,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=60,
                )
        return scheduler

    async def start(self) -> None:
        """Catch up (reap leases, plan cron) once, then start ticking."""
        await self.heartbeat_tick()
        await self.reap_tick()
        await self.plan_tick()
        self.scheduler = self.build_scheduler()
        self.scheduler.start()
        log.info("scheduler started as %s", self.worker_id)

    async def shutdown(self) -> None:
        """Graceful stop: no new claims, release what is claimed but unsent."""
        self.dispatcher.stop()
        async with self._dispatching:  # let a running tick finish its batch
            pass
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        released = await asyncio.to_thread(self.dispatcher.release_claims)
        if released:
            log.info("released %d claimed deliveries", released)
        try:
            await asyncio.to_thread(self.heartbeat.beat, stopped=True)
        except Exception:  # noqa: BLE001 - the row then just goes stale
            log.exception("could not record the stop of worker %s", self.worker_id)
