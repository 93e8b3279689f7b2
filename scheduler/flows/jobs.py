"""The flows' background job: apply stored audience events (WeCom callbacks)
not yet applied, so an event survives a crash between the callback's reply
and its processing."""

from __future__ import annotations

import asyncio
from typing import Any

from scheduler.jobs import Job, JobContext
from sopbot.db import session_scope

JOB_INBOX = "sopbot:apply-inbox"


def apply_inbox_now(ctx: JobContext) -> Any:
    from scheduler.flows import changes

    with session_scope(ctx.engine) as session:
        return changes.apply_pending(session, ctx.clock.now())


async def apply_inbox(ctx: JobContext) -> Any:
    return await asyncio.to_thread(apply_inbox_now, ctx)


def _wecom_jobs() -> tuple[Job, ...]:
    from scheduler.flows import wecom_sync, wecom_tasks

    return (*wecom_sync.JOBS, *wecom_tasks.JOBS)


JOBS = (Job(JOB_INBOX, lambda s: 5.0, apply_inbox), *_wecom_jobs())
