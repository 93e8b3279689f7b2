"""Every background job runs on the scheduler's event loop, which ``sopbot
serve`` shares with the web pages. While another connection holds SQLite's
write lock (the dispatcher does, most of the time, when a burst is due), no
job may wait for it on the loop: the loop keeps turning, pages keep being
answered, and each job finishes once the lock is released."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import httpx
import pytest
from sqlalchemy.engine import make_url

from channels.registry import ensure_instance
from channels.wecom_fake import FakeWeCom
from scheduler.runtime import JOBS, SchedulerRuntime
from sopbot.db import is_sqlite, session_scope

CHANNEL = "wecom-a"
CONFIG = {"corp_id": "ww_corp", "corp_secret": "corp-secret", "agent_id": 1000002}

# If a job did block the loop, the lock is let go after this long, so the test
# fails on the stall it measured instead of hanging on the busy timeout.
SAFETY_RELEASE_S = 3.0


@pytest.fixture
async def wecom_runtime(engine, clock, settings):
    if not is_sqlite(engine):
        pytest.skip("SQLite's single write lock")
    with session_scope(engine) as session:  # the WeCom jobs have a channel to look at
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    http = httpx.AsyncClient(transport=FakeWeCom(clock).transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


async def test_no_job_waits_for_the_sqlite_write_lock_on_the_event_loop(
    wecom_runtime, engine
) -> None:
    path = make_url(str(engine.url)).database
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("ROLLBACK")

    safety = threading.Timer(SAFETY_RELEASE_S, release)
    safety.start()
    longest = 0.0
    try:
        jobs = [asyncio.create_task(job.run(wecom_runtime), name=job.id) for job in JOBS]
        # The loop must keep turning while every job is started and waiting.
        last = time.monotonic()
        for _ in range(200):
            await asyncio.sleep(0)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        lock_was_held = not released.is_set()
        release()
        await asyncio.wait_for(asyncio.gather(*jobs), timeout=30)
    finally:
        safety.cancel()
        release()
        holder.close()
    assert lock_was_held, f"the event loop stalled {longest:.1f} s behind the write lock"
    assert longest < 1.0, f"a job held the event loop {longest:.2f} s"
