"""Operations: ``/healthz`` (liveness, backlog, live workers), ``/api/workers``
and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from api.deps import ClockDep, EngineDep, SettingsDep
from scheduler.operations import heartbeat
from sopbot import __version__
from sopbot.db import reader

router = APIRouter(tags=["ops"])


# A health probe counts the due backlog up to this many rows: enough to see a
# backlog, without scanning a whole burst on every probe.
HEALTH_BACKLOG_COUNT = 10_000


class HealthOut(BaseModel):
    status: str
    version: str
    backlog: int = Field(
        description=f"deliveries due and not yet claimed, counted up to {HEALTH_BACKLOG_COUNT:,}"
    )
    backlog_more: bool = Field(
        description=f"more than {HEALTH_BACKLOG_COUNT:,} are due (GET /api/workers counts all)"
    )
    oldest_due: datetime | None
    oldest_overdue: heartbeat.OverdueDelivery | None
    live_workers: int
    workers: list[str]
    scheduler_in_process: bool
    warnings: list[str]


class WorkersOut(BaseModel):
    now: datetime
    live_workers: int
    stale_after_seconds: float
    backlog: int
    oldest_overdue: heartbeat.OverdueDelivery | None
    workers: list[heartbeat.WorkerView]


def _summary(
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    *,
    include_gone: bool = False,
    backlog_up_to: int | None = None,
) -> heartbeat.OpsSummary:
    with Session(reader(engine)) as session:
        return heartbeat.ops_summary(
            session,
            clock.now(),
            timedelta(seconds=settings.worker_stale_seconds),
            include_gone=include_gone,
            backlog_up_to=backlog_up_to,
        )


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"description": "the database does not answer"}},
)
def healthz(
    request: Request, engine: EngineDep, clock: ClockDep, settings: SettingsDep
) -> HealthOut | JSONResponse:
    """Liveness plus the backlog (deliveries due now and not yet claimed), the
    oldest overdue delivery and the live scheduler processes."""
    try:
        summary = _summary(engine, clock, settings, backlog_up_to=HEALTH_BACKLOG_COUNT)
    except OperationalError as exc:
        return JSONResponse(
            status_code=503,
            content={"status": "error", "detail": f"database unreachable: {exc.orig}"},
        )
    runtime = getattr(request.app.state, "runtime", None)
    child = getattr(request.app.state, "scheduler_process", None)
    in_process = bool(runtime is not None and runtime.scheduler is not None) or bool(
        child is not None and child.alive()
    )
    warnings = []
    more = summary.backlog > HEALTH_BACKLOG_COUNT
    backlog = min(summary.backlog, HEALTH_BACKLOG_COUNT)
    if summary.backlog and not summary.live_workers and not in_process:
        warnings.append(
            f"{'more than ' if more else ''}{backlog} deliveries are due and no "
            "scheduler process is alive "
            "(start `sopbot worker` or `sopbot serve`)"
        )
    oldest = summary.oldest_overdue
    return HealthOut(
        status="ok",
        version=__version__,
        backlog=backlog,
        backlog_more=more,
        oldest_due=oldest.run_at if oldest else None,
        oldest_overdue=oldest,
        live_workers=summary.live_workers,
        workers=[w.id for w in summary.workers if w.live],
        scheduler_in_process=in_process,
        warnings=warnings,
    )


@router.get("/api/workers", response_model=WorkersOut)
def list_workers(
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    include_gone: Annotated[
        bool, Query(description="also list stopped and silent workers seen in the last day")
    ] = False,
) -> WorkersOut:
    """Scheduler processes (live first) with what each has claimed and sent,
    the backlog and the oldest overdue delivery."""
    summary = _summary(engine, clock, settings, include_gone=include_gone)
    return WorkersOut(
        now=summary.now,
        live_workers=summary.live_workers,
        stale_after_seconds=settings.worker_stale_seconds,
        backlog=summary.backlog,
        oldest_overdue=summary.oldest_overdue,
        workers=summary.workers,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: deliveries by status, backlog, oldest overdue, live
    workers, breakers (database-wide), and this server's dispatch histograms
    (from its scheduler process, when it runs one)."""
    text = generate_latest(request.app.state.metrics_registry)
    child = getattr(request.app.state, "scheduler_process", None)
    if child is not None:
        text += child.metrics_text()
    return Response(text, media_type=CONTENT_TYPE_LATEST)
