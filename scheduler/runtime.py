"""The APScheduler side: an in-process clock that runs the jobs each domain
declares (``scheduler/*/jobs.py``). APScheduler holds no send jobs; the
database is the source of truth, so its jobs live in the memory store with
fixed ids and every process may run them (claims are atomic in the database).
The runtime decides nothing but when jobs run and how a process stops."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.engine import Engine

from channels.base import AdapterContext
from channels.http import channel_http_client
from channels.registry import ChannelPool
from scheduler.analytics import jobs as analytics_jobs
from scheduler.analytics.retention import RollupResult
from scheduler.flows import jobs as flows_jobs
from scheduler.jobs import Job
from scheduler.operations import jobs as operations_jobs
from scheduler.operations.heartbeat import Heartbeat
from scheduler.operations.metrics import DispatchMetrics
from scheduler.outbox import jobs as outbox_jobs
from scheduler.outbox import service, tasks
from scheduler.outbox.dispatch import Dispatcher, DispatchStats
from scheduler.staff import jobs as staff_jobs
from sopbot.clock import Clock
from sopbot.settings import Settings
from sopbot.workspace import WorkspaceWatch

log = logging.getLogger("sopbot.scheduler")

# The ids stay importable from here (tests, operators' dashboards).
JOB_DISPATCH = outbox_jobs.JOB_DISPATCH
JOB_PLAN = outbox_jobs.JOB_PLAN
JOB_REAP = outbox_jobs.JOB_REAP
JOB_TASKS = outbox_jobs.JOB_TASKS
JOB_HEARTBEAT = operations_jobs.JOB_HEARTBEAT
JOB_INBOX = flows_jobs.JOB_INBOX
JOB_ROLLUP = analytics_jobs.JOB_ROLLUP

# Every domain's jobs, in the order they first run.
JOBS: tuple[Job, ...] = (
    *outbox_jobs.JOBS,
    *flows_jobs.JOBS,
    *analytics_jobs.JOBS,
    *operations_jobs.JOBS,
    *staff_jobs.JOBS,
)

T = TypeVar("T")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def build_channel_pool(engine: Engine, clock: Clock, http: httpx.AsyncClient) -> ChannelPool:
    return ChannelPool(
        engine,
        lambda name: AdapterContext(http=http, engine=engine, clock=clock, instance_name=name),
    )


class SchedulerRuntime:
    """Owns the APScheduler instance, the dispatcher and the channel pool; is
    the context every job runs with (``scheduler.jobs.JobContext``)."""

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
        workspace: WorkspaceWatch | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        # Workspace settings saved in 设置 (by any process) reach this one through
        # the watch: a job checks it every few seconds (scheduler.operations.jobs).
        self.workspace = workspace or WorkspaceWatch(engine, settings)
        settings = self.workspace.settings if workspace is not None else settings
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
        # Jobs running now, so a stop can wait for them within its bound (and
        # cancel what is left at the bound).
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.last_dispatch: DispatchStats | None = None
        self.workspace.listen(self.use_settings)

    def use_settings(self, settings: Settings) -> None:
        """Workspace settings changed (saved here or in another process): the
        jobs and the dispatcher's defaults use them from now on."""
        self.settings = settings
        self.dispatcher.use_workspace(settings)

    # -- running a job -------------------------------------------------------------

    async def run(self, job: Callable[[Any], Awaitable[T]]) -> T | None:
        """Run one job now, tracked so that a stop can wait for it. A job a stop
        cancelled at its bound returns None instead of failing the scheduler."""
        task = asyncio.ensure_future(job(self))
        self._running.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self._stopping and task.cancelled():
                return None
            raise
        finally:
            self._running.discard(task)

    # The jobs by name, for callers that run one directly (tests, `sopbot` commands).

    async def dispatch_tick(self) -> DispatchStats:
        stats = await self.run(outbox_jobs.dispatch) or DispatchStats()
        self.last_dispatch = stats
        return stats

    async def plan_tick(self) -> service.PlanResult | None:
        return await self.run(outbox_jobs.plan)

    def plan_now(self) -> service.PlanResult:
        return outbox_jobs.plan_now(self)

    async def reap_tick(self) -> dict[str, int]:
        return await self.run(outbox_jobs.reap) or {}

    async def poll_tasks_tick(self) -> tasks.PollStats | None:
        return await self.run(outbox_jobs.poll_tasks)

    async def staff_tick(self) -> Any:
        return await self.run(staff_jobs.check)

    async def inbox_tick(self) -> Any:
        return await self.run(flows_jobs.apply_inbox)

    def apply_inbox_now(self) -> Any:
        return flows_jobs.apply_inbox_now(self)

    async def rollup_tick(self) -> RollupResult | None:
        return await self.run(analytics_jobs.rollup)

    async def heartbeat_tick(self) -> None:
        await self.run(operations_jobs.heartbeat)

    async def workspace_tick(self) -> None:
        await self.run(operations_jobs.refresh_workspace)

    # -- lifecycle ---------------------------------------------------------------------

    def build_scheduler(self) -> AsyncIOScheduler:
        """The APScheduler instance with every domain's jobs, configured
        carefully: memory store only, fixed ids, replace_existing,
        max_instances=1, coalesce and an explicit misfire grace time (its
        default of 1 s silently drops a late run)."""
        scheduler = AsyncIOScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": AsyncIOExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            timezone="UTC",
        )
        for job in JOBS:
            seconds = job.interval(self.settings)
            if seconds > 0:  # 0 switches a job off (the rollup)
                scheduler.add_job(
                    self.run,
                    "interval",
                    args=[job.run],
                    seconds=seconds,
                    id=job.id,
                    replace_existing=True,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=60,
                )
        return scheduler

    async def start(self) -> None:
        """Read the workspace settings, catch up (reap leases, plan cron) once,
        then start ticking."""
        await asyncio.to_thread(self.workspace.load)
        await self.heartbeat_tick()
        await self.reap_tick()
        await self.plan_tick()
        self.scheduler = self.build_scheduler()
        self.scheduler.start()
        log.info("scheduler started as %s", self.worker_id)

    async def shutdown(self) -> None:
        """Graceful stop within ``shutdown_seconds``: no new claims and no new
        channel calls; rows not handed to a channel go back to ``scheduled``;
        calls in flight finish and are recorded. Calls still in flight at the
        bound are cancelled: what is known is recorded, the rest is left to
        lease expiry (``unknown``, or sent again on a deduplicating channel)."""
        bound = self.settings.shutdown_seconds
        deadline = time.monotonic() + bound
        self._stopping = True
        # Outcome writes may wait out a database outage only until just before the bound.
        self.dispatcher.stop(within=bound * 0.8)
        if self.scheduler is not None:
            # Paused, not shut down yet: shutting APScheduler's executor down
            # cancels the jobs it runs, which would cut the calls in flight.
            self.scheduler.pause()
        running = set(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=bound * 0.6)
            if late:
                log.warning("stopping: cancelling %d jobs still running at the bound", len(late))
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=max(0.1, deadline - time.monotonic() - 0.5))
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        remaining = max(0.1, deadline - time.monotonic())
        try:
            released = await asyncio.wait_for(
                asyncio.to_thread(self.dispatcher.release_claims), timeout=remaining / 2
            )
            if released:
                log.info("released %d claimed deliveries", released)
            await asyncio.wait_for(
                asyncio.to_thread(self.heartbeat.beat, stopped=True),
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except Exception:  # noqa: BLE001 - leases and the stale heartbeat cover it
            log.exception("could not record the stop of worker %s", self.worker_id)
