"""The operations background jobs: tell the database this process is alive
(its ``workers`` row); catch up with workspace settings saved elsewhere."""

from __future__ import annotations

import asyncio

from scheduler.jobs import Job, JobContext

JOB_HEARTBEAT = "sopbot:heartbeat"
JOB_WORKSPACE = "sopbot:workspace"


async def heartbeat(ctx: JobContext) -> None:
    await asyncio.to_thread(ctx.heartbeat.beat)


async def refresh_workspace(ctx: JobContext) -> None:
    """One version check; the watch's listeners apply a change (the runtime's
    ``use_settings``)."""
    await asyncio.to_thread(ctx.workspace.refresh, force=True)


JOBS = (
    Job(JOB_HEARTBEAT, lambda s: s.heartbeat_seconds, heartbeat),
    Job(JOB_WORKSPACE, lambda s: s.workspace_refresh_seconds, refresh_workspace),
)
