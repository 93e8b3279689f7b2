"""The flows' background jobs: apply stored audience events (WeCom callbacks)
not yet applied, so an event survives a crash between the callback's reply
and its processing; write a fixed start's deliveries shortly before they fall
due (``scheduler.flows.fan_out``)."""

from __future__ import annotations

import asyncio
from typing import Any

from scheduler.jobs import Job, JobContext
from sopbot.db import session_scope

JOB_INBOX = "sopbot:apply-inbox"
JOB_FAN_OUT = "sopbot:fan-out-fixed"


def apply_inbox_now(ctx: JobContext) -> Any:
    from scheduler.flows import changes

    with session_scope(ctx.engine) as session:
        return changes.apply_pending(session, ctx.clock.now())


async def apply_inbox(ctx: JobContext) -> Any:
    return await asyncio.to_thread(apply_inbox_now, ctx)


def fan_out_now(ctx: JobContext) -> Any:
    from scheduler.flows import fan_out

    with session_scope(ctx.engine) as session:
        return fan_out.plan_fixed(session, ctx.clock.now())


async def fan_out_fixed(ctx: JobContext) -> Any:
    return await asyncio.to_thread(fan_out_now, ctx)


def _wecom_jobs() -> tuple[Job, ...]:
    from scheduler.flows import wecom_sync, wecom_tasks

    return (*wecom_sync.JOBS, *wecom_tasks.JOBS)


JOBS = (
    Job(JOB_INBOX, lambda s: 5.0, apply_inbox),
    Job(JOB_FAN_OUT, lambda s: s.plan_interval_seconds, fan_out_fixed),
    *_wecom_jobs(),
)
