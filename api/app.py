"""``create_app(settings)`` builds everything on start-up, nothing at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from api import errors
from api.routes import audiences, deliveries, pages, report_pages, templates, wecom_callback
from api.routes import channels as channel_routes
from api.routes import events as event_routes
from api.routes import segments as segment_routes
from api.routes import stats as stats_routes
from channels.registry import ensure_instance
from scheduler.models import Delivery, DeliveryStatus
from scheduler.runtime import SchedulerRuntime
from sopbot import __version__
from sopbot.clock import Clock, SystemClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot")


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    run_scheduler: bool | None = None,
    on_startup: Any = None,
) -> FastAPI:
    """Build the app. ``run_scheduler`` defaults to ``settings.run_scheduler``;
    ``on_startup(app)`` runs after the database is ready (the demo loads here)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.clock = clock or SystemClock()
        app.state.engine = engine or make_engine(settings)
        create_all(app.state.engine)
        with session_scope(app.state.engine) as session:
            ensure_instance(session, "mock", "mock")
        app.state.http = httpx.AsyncClient(timeout=30)
        app.state.runtime = SchedulerRuntime(
            app.state.engine, app.state.clock, settings, http=app.state.http
        )
        if on_startup is not None:
            on_startup(app)
        scheduling = settings.run_scheduler if run_scheduler is None else run_scheduler
        if scheduling:
            await app.state.runtime.start()
        try:
            yield
        finally:
            if scheduling:
                await app.state.runtime.shutdown()
            await app.state.http.aclose()
            if engine is None:
                app.state.engine.dispose()

    app = FastAPI(
        title="sopbot",
        version=__version__,
        description="Private-domain community-operations SOP scheduler.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(templates.router)
    app.include_router(audiences.router)
    app.include_router(deliveries.router)
    app.include_router(channel_routes.router)
    app.include_router(pages.router)
    app.include_router(event_routes.router)
    app.include_router(segment_routes.router)
    app.include_router(wecom_callback.router)
    app.include_router(stats_routes.router)
    app.include_router(report_pages.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Liveness plus the backlog: deliveries due now and not yet sent."""
        now = app.state.clock.now()
        with session_scope(app.state.engine) as session:
            backlog = session.execute(
                select(func.count(), func.min(Delivery.run_at)).where(
                    Delivery.status == DeliveryStatus.SCHEDULED, Delivery.run_at <= now
                )
            ).one()
        return {
            "status": "ok",
            "version": __version__,
            "backlog": backlog[0],
            "oldest_due": backlog[1],
        }

    return app
