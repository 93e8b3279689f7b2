"""``sopbot worker``: the scheduler and dispatch without the API, for running
many processes against one PostgreSQL. SIGTERM/SIGINT stop it gracefully within
SOPBOT_SHUTDOWN_SECONDS: no new claims or channel calls, rows not handed over
released, calls in flight finished and recorded, then exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta

from prometheus_client import CollectorRegistry, start_http_server

from scheduler.operations.metrics import DispatchMetrics, build_registry
from scheduler.runtime import SchedulerRuntime
from sopbot.clock import SystemClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.gc_pauses import freeze_startup_objects
from sopbot.settings import Settings

log = logging.getLogger("sopbot.worker")


async def run_worker(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    role: str = "worker",
    dispatch_metrics_port: int | None = None,
    freeze_gc: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``). ``role="serve"`` with
    ``dispatch_metrics_port`` is serve's scheduler process
    (``scheduler.operations.child``): it serves only its dispatch histograms, on
    loopback, for serve's ``/metrics`` to append. ``freeze_gc`` (the commands,
    not tests): once started, what start-up made is left out of full GC passes
    (``sopbot.gc_pauses``)."""
    engine = make_engine(settings)
    create_all(engine)
    from channels.registry import ensure_instance

    with session_scope(engine) as session:
        ensure_instance(session, "mock", "mock")
    clock = SystemClock()
    metrics_server = None
    if dispatch_metrics_port is not None:
        registry = CollectorRegistry(auto_describe=False)
        dispatch_metrics = DispatchMetrics(registry)
        metrics_server, _ = start_http_server(
            dispatch_metrics_port, addr="127.0.0.1", registry=registry
        )
    else:
        registry, dispatch_metrics = build_registry(
            engine,
            clock,
            stale=timedelta(seconds=settings.worker_stale_seconds),
            cache_seconds=settings.metrics_cache_seconds,
        )
    runtime = SchedulerRuntime(engine, clock, settings, role=role, metrics=dispatch_metrics)
    if settings.metrics_port and dispatch_metrics_port is None:
        # This worker's own dispatch histograms (and the database-wide figures).
        metrics_server, _ = start_http_server(settings.metrics_port, registry=registry)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # not available off the main thread or on some platforms
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    if freeze_gc:
        freeze_startup_objects()
    log.info("worker %s running against %s", runtime.worker_id, engine.url.render_as_string())
    try:
        await stop.wait()
    finally:
        log.info("worker %s stopping", runtime.worker_id)
        await runtime.shutdown()
        await runtime.http.aclose()
        if metrics_server is not None:
            metrics_server.shutdown()
        engine.dispose()
