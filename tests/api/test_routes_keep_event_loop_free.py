"""A route that is a coroutine runs on the event loop ``sopbot serve`` shares
with the scheduler; a database session there would wait for SQLite's write
lock on the loop and hold up every other page. Routes that use a session are
plain functions (FastAPI runs them in its thread pool); a posted form comes
to them through ``FormDep``."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.app import create_app
from api.deps import get_reader, get_session


def _calls(dependant: Dependant) -> set[object]:
    found: set[object] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= _calls(sub)
    return found


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(router.routes)  # an included router


def test_no_coroutine_route_takes_a_database_session(settings) -> None:
    app = create_app(settings)
    routes = list(_api_routes(app.routes))
    assert len(routes) > 100  # every router was walked
    offenders = [
        f"{sorted(route.methods)} {route.path} ({route.endpoint.__name__})"
        for route in routes
        if isinstance(route, APIRoute)
        and inspect.iscoroutinefunction(route.endpoint)
        and _calls(route.dependant) & {get_session, get_reader}
    ]
    assert offenders == []
