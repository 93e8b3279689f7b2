"""The analytics background job: add newly finished deliveries to the
statistics rollups, so a template's report reads a few hourly rows instead of
every delivery. Workers may all run it: the rollup watermark is locked while
it moves."""

from __future__ import annotations

import asyncio

from scheduler.analytics.retention import RollupResult, roll_up
from scheduler.jobs import Job, JobContext

JOB_ROLLUP = "sopbot:rollup"


async def rollup(ctx: JobContext) -> RollupResult:
    return await asyncio.to_thread(roll_up, ctx.engine, ctx.clock, ctx.settings)


JOBS = (Job(JOB_ROLLUP, lambda s: s.rollup_interval_seconds, rollup),)
