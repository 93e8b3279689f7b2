"""The staff tasks' background job: deadlines, digests and nudges."""

from __future__ import annotations

from scheduler.jobs import Job, JobContext
from scheduler.staff import digest

JOB_STAFF = "sopbot:staff-digests"


async def check(ctx: JobContext) -> digest.DigestStats:
    """Expire overdue staff tasks; send this window's digests and nudges."""
    return await digest.run(ctx.engine, ctx.clock, ctx.channels, ctx.settings)


JOBS = (Job(JOB_STAFF, lambda s: s.staff_check_seconds, check),)
