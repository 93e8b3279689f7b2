"""Annotated dependency aliases for routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.datastructures import FormData, QueryParams

from scheduler.analytics import log
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.ids import parse_id
from sopbot.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def current_workspace(request: Request) -> None:
    """Every request first catches up with workspace settings saved by another
    process (a version check at most every few seconds, ``sopbot.workspace``);
    the watch's listener replaces ``app.state.settings``."""
    watch = getattr(request.app.state, "workspace", None)
    if watch is not None:
        watch.refresh()


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


def query_id(params: QueryParams, name: str) -> int | None:
    """The id in query parameter ``name`` (absent or empty: None). Anything but
    ASCII digits is the caller's mistake: FastAPI's 422, naming the parameter."""
    value = (params.get(name) or "").strip()
    if not value:
        return None
    number = parse_id(value)
    if number is None:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"{name} must be a whole number in ASCII digits",
                    "type": "int_parsing",
                    "input": value[:50],
                }
            ]
        )
    return number


def get_session(request: Request) -> Iterator[Session]:
    """The request owns the session: commit on success, roll back on error.

    Bound to the route function (``scope="function"`` below), not to the whole
    request: the commit runs when the route has returned and before a byte of
    the response is sent, so a client never sees a success (or follows a
    redirect) before its data is readable by anyone else, and a commit that
    fails is the request's 500, with nothing written."""
    with session_scope(request.app.state.engine) as session:
        yield session


def get_reader(request: Request) -> Iterator[Session]:
    """A read-only session on one consistent snapshot (it never takes SQLite's
    write lock, so reading the delivery log does not hold up the scheduler)."""
    with Session(log.read_snapshot(request.app.state.engine)) as session:
        yield session


async def form_data(request: Request) -> FormData:
    """The posted form, read on the event loop before the route runs: routes
    that take it stay plain functions, so their database work runs in the
    thread pool and never holds up the event loop (which ``serve`` shares with
    the scheduler) while it waits for SQLite's write lock."""
    return await request.form()


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ClockDep = Annotated[Clock, Depends(get_clock)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReaderDep = Annotated[Session, Depends(get_reader)]
FormDep = Annotated[FormData, Depends(form_data)]
