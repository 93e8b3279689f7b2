"""The delivery log over HTTP: filtered and cursor-paginated, or streamed out as
CSV / NDJSON with the same filters; and the mock channel's inbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import col, select

from api.deps import ClockDep, EngineDep, ReaderDep, SessionDep, SettingsDep
from api.errors import request_locale
from channels.models import MockMessage
from scheduler.analytics import log
from scheduler.analytics.log import InvalidLogQuery, LogFilter
from scheduler.outbox.models import DeliveryStatus
from sopbot.ids import parse_id

router = APIRouter(prefix="/api", tags=["deliveries"])


# -- shared by the log, stats and report routes ---------------------------------------


IdQuery = Annotated[int | None, Query(ge=1, le=log.MAX_ID)]

LOG_PARAMS = (
    "template_id",
    "version_id",
    "touchpoint_id",
    "status",
    "reason",
    "channel",
    "account_id",
    "contact_id",
    "group_id",
    "tag",
    "due_from",
    "due_to",
    "sent_from",
    "sent_to",
    "clicked",
    "converted",
)


def parse_log_filter(get: Callable[[str], list[str]], zone: ZoneInfo) -> LogFilter:
    """A ``LogFilter`` from query parameters (``get(name)`` → its values; empty
    values count as absent, as an HTML form sends them). Raises InvalidLogQuery."""

    def one(name: str) -> str | None:
        values = [v for v in get(name) if v.strip()]
        return values[-1].strip() if values else None

    def number(name: str) -> int | None:
        value = one(name)
        if value is None:
            return None
        number = parse_id(value)
        if number is None:
            raise InvalidLogQuery(name, f"{name} {value!r} is not a whole number")
        if not 1 <= number <= log.MAX_ID:
            raise InvalidLogQuery(name, f"{name} must be an id between 1 and {log.MAX_ID}")
        return number

    def yes_no(name: str) -> bool | None:
        value = one(name)
        if value is None:
            return None
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise InvalidLogQuery(name, f"{name} {value!r} must be true or false")

    statuses = tuple(s.strip() for v in get("status") for s in v.split(",") if s.strip())
    return LogFilter(
        template_id=number("template_id"),
        version_id=number("version_id"),
        touchpoint_id=number("touchpoint_id"),
        statuses=statuses,
        reason=one("reason"),
        channel=one("channel"),
        account_id=number("account_id"),
        contact_id=number("contact_id"),
        group_id=number("group_id"),
        tag=one("tag"),
        due_from=log.parse_instant(one("due_from"), zone, "due_from"),
        due_to=log.parse_instant(one("due_to"), zone, "due_to", end=True),
        sent_from=log.parse_instant(one("sent_from"), zone, "sent_from"),
        sent_to=log.parse_instant(one("sent_to"), zone, "sent_to", end=True),
        clicked=yes_no("clicked"),
        converted=yes_no("converted"),
    )


def log_query_string(request: Request, **override: str | None) -> str:
    """The request's own log parameters (non-empty ones), with overrides — for
    next-page links and export links that keep the filters."""
    pairs = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if v.strip() and k not in override and k in (*LOG_PARAMS, "sort", "order", "limit")
    ]
    pairs += [(k, v) for k, v in override.items() if v]
    return urlencode(pairs)


def log_filter(
    request: Request,
    settings: SettingsDep,
    template_id: IdQuery = None,
    version_id: IdQuery = None,
    touchpoint_id: IdQuery = None,
    status: Annotated[
        list[str] | None,
        Query(description="repeat or comma-separate; one of " + ", ".join(DeliveryStatus.ALL)),
    ] = None,
    reason: Annotated[str | None, Query(description="case-insensitive substring")] = None,
    channel: Annotated[str | None, Query(description="channel instance name")] = None,
    account_id: Annotated[
        int | None, Query(ge=1, le=log.MAX_ID, description="staff account owning the target")
    ] = None,
    contact_id: IdQuery = None,
    group_id: IdQuery = None,
    tag: Annotated[str | None, Query(description="tag name the target carries now")] = None,
    due_from: Annotated[
        str | None,
        Query(description="ISO 8601; without an offset in the workspace zone; inclusive"),
    ] = None,
    due_to: Annotated[str | None, Query(description="exclusive; a bare date: to its end")] = None,
    sent_from: str | None = None,
    sent_to: str | None = None,
    clicked: Annotated[
        bool | None, Query(description="true: a person clicked one of its tracked links")
    ] = None,
    converted: Annotated[
        bool | None, Query(description="true: its enrollment converted, attributed to it")
    ] = None,
) -> LogFilter:
    # The parameters above are declared for FastAPI's type checks and the OpenAPI
    # page; the filter is read from the query string the same way the HTML log
    # page reads it (repeated or comma-separated statuses, local times). An
    # InvalidLogQuery becomes a 422 naming the parameter (api.errors).
    return parse_log_filter(request.query_params.getlist, ZoneInfo(settings.default_timezone))


LogFilterDep = Annotated[LogFilter, Depends(log_filter)]
Sort = Annotated[str, Query(description="due_at or sent_at (unsent rows last)")]
Order = Annotated[str, Query(description="desc or asc")]


# -- the log ------------------------------------------------------------------------


@router.get("/deliveries", response_model=list[log.LogEntry])
def list_deliveries(
    request: Request,
    response: Response,
    session: ReaderDep,
    clock: ClockDep,
    flt: LogFilterDep,
    sort: Sort = "due_at",
    order: Order = "desc",
    limit: Annotated[int, Query(ge=1, le=log.MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None, Query(description="from the previous page's X-Next-Cursor")
    ] = None,
) -> Any:
    """The delivery log, newest due first. More pages: the ``X-Next-Cursor``
    header (and ``Link: rel="next"``) carries the cursor of the next one."""
    page = log.list_page(
        session, flt, sort=sort, order=order, limit=limit, cursor=cursor, now=clock.now()
    )
    if page.next_cursor:
        response.headers["X-Next-Cursor"] = page.next_cursor
        next_url = request.url.replace(query=log_query_string(request, cursor=page.next_cursor))
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return page.entries


def _export(
    kind: str,
    flt: LogFilter,
    engine: Any,
    settings: Any,
    clock: Any,
    sort: str,
    order: str,
    lang: str = "zh_CN",
) -> StreamingResponse:
    # now: once the response has started streaming it is too late for a 422
    log.check_sort(sort, order)
    zone = ZoneInfo(settings.default_timezone)
    stamp = clock.now().astimezone(zone).strftime("%Y%m%d-%H%M%S")
    if kind == "csv":
        body = log.export_csv(engine, flt, zone, sort=sort, order=order, lang=lang)
        media = "text/csv; charset=utf-8"
    else:
        body = log.export_ndjson(engine, flt, sort=sort, order=order)
        media = "application/x-ndjson"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="deliveries-{stamp}.{kind}"'},
    )


@router.get("/deliveries/export.csv", response_class=StreamingResponse)
def export_csv(
    request: Request,
    flt: LogFilterDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
    sort: Sort = "due_at",
    order: Order = "desc",
) -> StreamingResponse:
    """The filtered log as CSV (UTF-8 with BOM for Excel; times in the workspace
    zone; column names, statuses and reasons in the caller's language: ``?lang=``,
    the UI's language, else Accept-Language, else Chinese), streamed: memory stays
    flat for any number of rows."""
    return _export("csv", flt, engine, settings, clock, sort, order, request_locale(request))


@router.get("/deliveries/export.ndjson", response_class=StreamingResponse)
def export_ndjson(
    flt: LogFilterDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
    sort: Sort = "due_at",
    order: Order = "desc",
) -> StreamingResponse:
    """The filtered log as NDJSON (one delivery per line, the row shape of
    ``GET /api/deliveries``, times in UTC), streamed."""
    return _export("ndjson", flt, engine, settings, clock, sort, order)


# -- the mock channel -----------------------------------------------------------------


class MockMessageOut(BaseModel):
    id: int
    instance: str
    delivery_id: int
    target_kind: str
    target_external_id: str
    mode: str
    parts: list[dict[str, Any]]
    received_at: datetime


@router.get("/mock/messages", response_model=list[MockMessageOut], tags=["channels"])
def mock_messages(session: SessionDep, limit: int = Query(100, ge=1, le=1000)) -> Any:
    """What the mock channel received, newest first (the demo's "phone")."""
    return session.exec(select(MockMessage).order_by(col(MockMessage.id).desc()).limit(limit)).all()
