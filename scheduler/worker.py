"""``sopbot worker``: the scheduler and dispatch without the API, for running
many processes against one PostgreSQL. SIGTERM/SIGINT stop it gracefully: no
new claims, claimed-but-unsent rows released, then exit."""

from __future__ import annotations

import asyncio
import logging
import signal

from scheduler.runtime import SchedulerRuntime
from sopbot.clock import SystemClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.worker")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    engine = make_engine(settings)
    create_all(engine)
    from channels.registry import ensure_instance

    with session_scope(engine) as session:
        ensure_instance(session, "mock", "mock")
    runtime = SchedulerRuntime(engine, SystemClock(), settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    await runtime.start()
    log.info("worker %s running against %s", runtime.worker_id, engine.url.render_as_string())
    try:
        await stop.wait()
    finally:
        log.info("worker %s stopping", runtime.worker_id)
        await runtime.shutdown()
        await runtime.http.aclose()
        engine.dispose()
