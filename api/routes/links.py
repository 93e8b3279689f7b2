"""Tracked short links: ``GET /{prefix}/{token}`` records the click and
redirects (302) to the link's address. Open to anyone who has the link (the
token is the secret).

Customers' clicks come in bursts (a mass send lands in thousands of chats at
once), so the redirect is answered by :class:`ShortLinks`, an ASGI layer in
front of the whole app: no session, CSRF, language, audit or JSON middleware,
no dependency injection, the token looked up in memory (``LinkCache``; the
database only the first time a token is seen), and the click handed to the
batching writer (``scheduler.flows.clicks``) instead of written in the request.
The route below is what the API documentation shows; it answers the same way.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.guards import SECURITY_HEADERS
from scheduler.outcomes import links

NOT_FOUND = "链接无效或已失效。"
_NOT_FOUND_BODY = NOT_FOUND.encode()
# What Starlette's RedirectResponse leaves unquoted in a Location header.
_LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"
_COMMON_HEADERS = [
    (b"cache-control", b"no-store"),  # every click must reach us, none a cached answer
    (b"referrer-policy", b"no-referrer"),
    *((k, v) for k, v in SECURITY_HEADERS if k != b"referrer-policy"),
]


async def open_link(state: Any, token: str, user_agent: str) -> links.Link | None:
    """The link of ``token`` (None: unknown), its click handed to the writer."""
    cache: links.LinkCache = state.link_cache
    link = cache.get(token)
    if link is None:
        if not links.TOKEN.match(token):
            return None
        if cache.inline:
            link = cache.lookup(token)
        else:
            link = await anyio.to_thread.run_sync(cache.lookup, token)
        if link is None:
            return None
    recorder = state.link_clicks
    now = state.clock.now()
    if recorder.flush_seconds <= 0:  # written in the request: off the event loop
        await anyio.to_thread.run_sync(recorder.opened, link, now, user_agent)
    else:
        recorder.opened(link, now, user_agent)
    return link


class ShortLinks:
    """Answers ``GET``/``HEAD /{prefix}/{token}`` before any other middleware."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.start = f"/{prefix.strip('/')}/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            not path.startswith(self.start)
            or scope["method"] not in ("GET", "HEAD")
            or "/" in path[len(self.start) :]
        ):
            await self.app(scope, receive, send)
            return
        token = path[len(self.start) :]
        agent = ""
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value.decode("latin-1")
                break
        link = await open_link(scope["app"].state, token, agent)
        if link is None:
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_NOT_FOUND_BODY)).encode()),
                *_COMMON_HEADERS,
            ]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            body = _NOT_FOUND_BODY if scope["method"] == "GET" else b""
            await send({"type": "http.response.body", "body": body})
            return
        location = quote(link.url, safe=_LOCATION_SAFE).encode("latin-1")
        headers = [(b"location", location), (b"content-length", b"0"), *_COMMON_HEADERS]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class _NoShortLinks(logging.Filter):
    """Leaves short-link requests out of uvicorn's access log: each is recorded
    as a click already, a token is as good as the link, and writing a log line
    costs about as much as answering the request."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) > 2
            and isinstance(args[2], str)
            and args[2].startswith(self.start)
        )


def quiet_access_log(prefix: str) -> None:
    """Install :class:`_NoShortLinks` on ``uvicorn.access`` (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoShortLinks) for f in access.filters):
        access.addFilter(_NoShortLinks(f"/{prefix.strip('/')}/"))


def build_router(prefix: str) -> APIRouter:
    """The redirect route under ``/{prefix}`` (``Settings.link_prefix``), for
    the API documentation; :class:`ShortLinks` answers these requests first."""
    router = APIRouter(tags=["links"])

    @router.get(
        f"/{prefix}/{{token}}",
        response_class=RedirectResponse,
        status_code=302,
        responses={404: {"description": "unknown link"}},
        summary="Open a tracked link",
    )
    async def open_tracked_link(token: str, request: Request) -> Response:
        """Record a ``link_clicked`` (person, repeat or bot/preview) and redirect."""
        link = await open_link(request.app.state, token, request.headers.get("user-agent", ""))
        if link is None:
            return PlainTextResponse(NOT_FOUND, status_code=404)
        return RedirectResponse(link.url, status_code=302)

    return router
