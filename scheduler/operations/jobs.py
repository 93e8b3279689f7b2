"""The operations background job: tell the database this process is alive
(its ``workers`` row)."""

from __future__ import annotations

import asyncio

from scheduler.jobs import Job, JobContext

JOB_HEARTBEAT = "sopbot:heartbeat"


async def heartbeat(ctx: JobContext) -> None:
    await asyncio.to_thread(ctx.heartbeat.beat)


JOBS = (Job(JOB_HEARTBEAT, lambda s: s.heartbeat_seconds, heartbeat),)
