"""``create_app(settings)`` builds everything on start-up, nothing at import."""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

from api import auth, deps, errors, guards, i18n
from api.audit_middleware import AuditMiddleware
from api.import_progress import ImportProgress
from api.routes import (
    audiences,
    deliveries,
    pages,
    report_pages,
    staff_inbox,
    templates,
    ui_admin,
    ui_audience_edit,
    ui_audiences,
    ui_auth,
    ui_materials,
    ui_outcomes,
    ui_segments,
    ui_templates,
    ui_users,
    wecom_callback,
)
from api.routes import channels as channel_routes
from api.routes import events as event_routes
from api.routes import links as link_routes
from api.routes import ops as ops_routes
from api.routes import outcomes as outcome_routes
from api.routes import segments as segment_routes
from api.routes import stats as stats_routes
from api.routes import users as user_routes
from channels.http import channel_http_client
from channels.registry import ensure_instance
from scheduler.flows import clicks
from scheduler.operations.child import SchedulerProcess
from scheduler.operations.metrics import build_registry
from scheduler.outcomes import links
from scheduler.runtime import SchedulerRuntime
from sopbot import __version__
from sopbot.clock import Clock, SystemClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.gc_pauses import freeze_startup_objects
from sopbot.settings import Settings
from sopbot.workspace import WorkspaceWatch

log = logging.getLogger("sopbot")

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    run_scheduler: bool | None = None,
    scheduler_process: bool = False,
    on_startup: Any = None,
) -> FastAPI:
    """Build the app. ``run_scheduler`` defaults to ``settings.run_scheduler``;
    with ``scheduler_process`` the scheduler runs in a child process
    (``scheduler.operations.child``, what ``sopbot serve`` does) instead of on
    this event loop. ``on_startup(app)`` runs after the database is ready (the
    demo loads here)."""
    settings = settings or Settings()
    scheduling = settings.run_scheduler if run_scheduler is None else run_scheduler
    in_child = scheduling and scheduler_process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.clock = clock or SystemClock()
        app.state.engine = engine or make_engine(settings)
        create_all(app.state.engine)
        with session_scope(app.state.engine) as session:
            ensure_instance(session, "mock", "mock")
        # Stored workspace settings win, here and (within a few seconds of a
        # save anywhere) in every request and this process's scheduler.
        app.state.workspace = WorkspaceWatch(app.state.engine, settings)
        app.state.workspace.listen(
            lambda now_settings: setattr(app.state, "settings", now_settings)
        )
        app.state.workspace.load()
        app.state.import_progress = ImportProgress()  # the import page's progress bar
        app.state.secret_key = auth.load_secret_key(
            app.state.engine, settings.secret_key, app.state.clock.now()
        )
        # Several small connection pools: see channels.http.
        app.state.http = channel_http_client()
        # Per-app Prometheus registry (nothing global): database-wide figures
        # plus what this process's scheduler dispatches (scheduler.operations.metrics).
        app.state.metrics_registry, dispatch_metrics = build_registry(
            app.state.engine,
            app.state.clock,
            stale=timedelta(seconds=settings.worker_stale_seconds),
            cache_seconds=settings.metrics_cache_seconds,
            with_dispatch=not in_child,
        )
        # Without a scheduler of its own (the child has one) the runtime still
        # holds the channel pool that test sends use.
        app.state.runtime = SchedulerRuntime(
            app.state.engine,
            app.state.clock,
            app.state.settings,
            http=app.state.http,
            role="serve",
            metrics=dispatch_metrics,
            workspace=app.state.workspace,
        )
        # Tracked links: tokens kept in memory, clicks written in batches.
        app.state.link_cache = links.LinkCache(app.state.engine)
        app.state.link_clicks = clicks.ClickRecorder(
            app.state.engine, app.state.clock, flush_seconds=settings.link_click_flush_seconds
        )
        app.state.link_clicks.start()
        link_routes.quiet_access_log(settings.link_prefix)
        if on_startup is not None:
            on_startup(app)
        app.state.scheduler_process = None
        if in_child:
            app.state.scheduler_process = SchedulerProcess(
                shutdown_seconds=settings.shutdown_seconds
            )
            app.state.scheduler_process.start()
        elif scheduling:
            await app.state.runtime.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(app.state.link_clicks.stop)
            if in_child:
                await app.state.scheduler_process.stop()
            elif scheduling:
                await app.state.runtime.shutdown()
            await app.state.http.aclose()
            if engine is None:
                app.state.engine.dispose()

    app = FastAPI(
        title="sopbot",
        version=__version__,
        description="Private-domain community-operations SOP scheduler.",
        lifespan=lifespan,
        # FastAPI's own pages load Swagger UI and ReDoc from a CDN; /docs is
        # served below from the vendored copy instead, so it works offline and
        # where the CDN is blocked.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(guards.single_valued_query), Depends(deps.current_workspace)],
    )
    errors.install(app)
    # Every route checks the caller (api.auth). Routers that declare the
    # permission of each route themselves only need a logged-in user here; the
    # others get a method-based gate: reads need `read`, changes the permission given.
    Permission = auth.Permission
    signed_in = [Depends(auth.current_user)]
    app.include_router(templates.router, dependencies=signed_in)
    app.include_router(audiences.router, dependencies=signed_in)
    app.include_router(user_routes.router, dependencies=signed_in)
    app.include_router(deliveries.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    app.include_router(channel_routes.router, dependencies=[Depends(auth.gate(Permission.ADMIN))])
    app.include_router(pages.router, dependencies=signed_in)
    app.include_router(event_routes.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    app.include_router(segment_routes.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    # WeCom callbacks carry their own signature (audiences.wecom_crypto), no user.
    app.include_router(wecom_callback.router)
    # Tracked short links are opened by customers: the token is the secret.
    app.include_router(link_routes.build_router(settings.link_prefix))
    app.include_router(outcome_routes.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    app.include_router(stats_routes.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    app.include_router(report_pages.router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    # Staff execution: the inbox's signed link is its own credential (scheduler.staff.links).
    app.include_router(staff_inbox.router)
    app.include_router(ui_materials.public_router)  # signed material addresses
    app.include_router(staff_inbox.api_router, dependencies=[Depends(auth.gate(Permission.AUTHOR))])
    # /healthz (load balancers) and /metrics (Prometheus) stay open; /api/workers is
    # for admins (README), reading included.
    ops_gate = auth.gate(Permission.ADMIN, read=Permission.ADMIN, public=("/healthz", "/metrics"))
    app.include_router(ops_routes.router, dependencies=[Depends(ops_gate)])
    # The operator UI (server-rendered; each route declares its permission).
    app.include_router(ui_auth.router)
    app.include_router(ui_templates.router, dependencies=signed_in)
    app.include_router(ui_audience_edit.router, dependencies=signed_in)
    app.include_router(ui_segments.router, dependencies=signed_in)
    app.include_router(ui_audiences.router, dependencies=signed_in)
    app.include_router(ui_admin.router, dependencies=signed_in)
    app.include_router(ui_users.router, dependencies=signed_in)
    app.include_router(ui_outcomes.router, dependencies=signed_in)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    _add_docs_and_icon(app)
    app.add_middleware(AuditMiddleware)
    # Outermost last: security headers on every answer, the size limit before
    # anything reads a body, then JSON that routes and the database can hold.
    app.add_middleware(guards.StrictJSON)
    app.add_middleware(
        guards.BodyLimit,
        default=settings.max_body_bytes,
        by_path={"/api/contacts/import": settings.max_import_bytes},
    )
    app.add_middleware(guards.SecurityHeaders)
    # Outermost of all: a customer's click on a short link needs none of the above.
    app.add_middleware(link_routes.ShortLinks, prefix=settings.link_prefix)

    return app


SWAGGER_UI = "/static/vendor/swagger-ui-5.35.0"  # swagger-ui-dist from the npm registry


def warm_up_in_background() -> None:
    """What a server process does once started, in a thread of its own: compile
    every page template (about a second of CPU in all, which the first operator
    to open each page would otherwise wait for), then leave what start-up made
    out of full GC passes (``sopbot.gc_pauses``)."""

    def warm_up() -> None:
        i18n.warm()
        freeze_startup_objects()

    threading.Thread(target=warm_up, name="sopbot-warm-up", daemon=True).start()


def create_served_app() -> FastAPI:
    """``sopbot api``'s app factory: each of its server processes builds one
    and warms up once started."""
    return create_app(on_startup=lambda _app: warm_up_in_background())


def _add_docs_and_icon(app: FastAPI) -> None:
    """The interactive API docs at /docs, and the site icon (open, like the
    OpenAPI document itself)."""

    @app.get("/docs", include_in_schema=False)
    def api_docs(
        principal: Annotated[auth.Principal | None, Depends(auth.optional_principal)],
    ) -> HTMLResponse:
        # Swagger UI started by a static file (no inline script: see api.guards).
        # Logged in through the browser, "Try it out" sends the session's CSRF token.
        title = html.escape(f"{app.title} API")
        spec = html.escape(app.openapi_url or "/openapi.json")
        token = principal.csrf_token if principal is not None and principal.csrf_token else ""
        csrf = f' data-csrf-token="{html.escape(token)}"' if token else ""
        return HTMLResponse(
            "<!doctype html><html><head>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css">'
            '<link rel="icon" href="/static/favicon.svg">'
            f"<title>{title}</title></head><body>"
            f'<div id="swagger-ui" data-openapi-url="{spec}"{csrf}></div>'
            f'<script src="{SWAGGER_UI}/swagger-ui-bundle.js"></script>'
            '<script src="/static/swagger-init.js"></script>'
            "</body></html>"
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")
