"""What every request passes before a route sees it, and what every UI answer
carries: a body size limit (413), JSON bodies that a route and the database can
hold (finite numbers, valid Unicode, no NUL; else 422), and the security headers
of the operator UI. Pure ASGI middleware: nothing here buffers a response."""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Bodies over ``default`` bytes (``by_path``: another limit for a path, e.g.
    the CSV import) are refused with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, default: int, by_path: Mapping[str, int]) -> None:
        self.app, self.default, self.by_path = app, default, dict(by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        await RequestBodyLimitResponder(self.app, limit)(scope, receive, send)


class BadJSON(ValueError):
    """A JSON body no route should see; the message says what is wrong."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"the number {text[:40]} is too large (only finite numbers are accepted)")
    return value


def _constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a number JSON allows (only finite numbers are accepted)")


def _check_text(value: Any) -> None:
    """Every string (keys too) is valid Unicode without NUL, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadJSON("a text contains the NUL character (\\u0000)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJSON(
                    "a text contains a lone surrogate (e.g. \\ud800), which is not Unicode"
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_json(body: bytes) -> None:
    """Raise ``BadJSON`` for a body that parses only thanks to Python's leniency
    (NaN, Infinity, 1e400) or holds text no database column can store. Bodies
    that are not JSON at all are left to FastAPI's own 422."""
    try:
        parsed = json.loads(body, parse_float=_finite, parse_constant=_constant)
    except BadJSON:
        raise
    except RecursionError:
        raise BadJSON("the JSON body is nested too deeply") from None
    except ValueError:  # not JSON (or not UTF-8): FastAPI says where
        return
    _check_text(parsed)


class StrictJSON:
    """Checks JSON bodies (``check_json``) before the route parses them; the
    body is then handed on unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                check_json(body)
            except BadJSON as exc:
                from api import error_codes
                from api.errors import request_locale

                problems = [{"type": "json_invalid", "loc": ["body"], "msg": str(exc)}]
                response = JSONResponse(
                    status_code=422,
                    content=error_codes.validation_body(problems, request_locale(Request(scope))),
                )
                await response(scope, receive, send)
                return
        message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([message], receive), send)


def _is_json(scope: Scope) -> bool:
    if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return False
    for key, value in scope["headers"]:
        if key == b"content-type":
            return b"json" in value.lower()
    return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# The UI loads only its own files (api/static, the vendored Swagger UI): no
# inline script or style, no other origin, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; object-src 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Every answer carries the headers above (a JSON answer too: they cost
    nothing there and protect a browser that opens it directly)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- query parameters ------------------------------------------------------------------

_SCALAR_QUERY: dict[int, frozenset[str]] = {}


def _takes_many(annotation: Any) -> bool:
    kinds = {typing.get_origin(a) for a in (annotation, *typing.get_args(annotation))}
    return bool(kinds & {list, tuple, set, frozenset, Sequence})


def _scalar_query_names(route: Any) -> frozenset[str]:
    """The query parameters of ``route`` (its dependencies' too) that take one value."""
    names = _SCALAR_QUERY.get(id(route))
    if names is None:
        found: set[str] = set()
        pending = [route.dependant] if hasattr(route, "dependant") else []
        while pending:
            dependant = pending.pop()
            found.update(
                p.alias for p in dependant.query_params if not _takes_many(p.field_info.annotation)
            )
            pending.extend(dependant.dependencies)
        names = _SCALAR_QUERY[id(route)] = frozenset(found)
    return names


def single_valued_query(request: Request) -> None:
    """A query parameter that takes one value, sent several times, is a 422 — not
    silently its last (or first) value."""
    route = request.scope.get("route")
    if route is None:
        return
    scalar = _scalar_query_names(route)
    repeated = [
        name
        for name in {k for k, _ in request.query_params.multi_items()}
        if name in scalar and len(request.query_params.getlist(name)) > 1
    ]
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "multiple_values",
                    "loc": ("query", name),
                    "msg": f"参数 {name} 只能给一个值 (query parameter {name} takes one value)",
                    "input": request.query_params.getlist(name)[:5],
                }
                for name in sorted(repeated)
            ]
        )
