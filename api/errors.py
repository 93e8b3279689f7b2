"""Domain errors → HTTP answers with the message the domain wrote."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import error_codes
from api.auth import Forbidden, NotAuthenticated
from api.users.service import UserError, UserNotFound
from audiences.service import AudienceError
from audiences.service import NotFound as AudienceNotFound
from channels.base import ChannelError
from channels.service import ChannelNotFound
from scheduler.analytics.log import InvalidLogQuery
from scheduler.analytics.stats import InvalidStatsQuery
from scheduler.flows.authoring import AuthoringError
from scheduler.outbox.service import EnrollmentError
from sop_templates.service import NotFound as TemplateNotFound
from sop_templates.service import TemplateError, TemplateValidationError


def install(app: FastAPI) -> None:
    @app.exception_handler(TemplateValidationError)
    async def _invalid(request: Request, exc: TemplateValidationError) -> JSONResponse:
        # each problem: where, the validator's text, and an error code with its
        # parameters and message in the caller's language (Accept-Language)
        locale = request_locale(request)
        return JSONResponse(
            status_code=422,
            content={
                "detail": str(exc),
                "errors": [error_codes.problem_json(loc, msg, locale) for loc, msg in exc.problems],
            },
        )

    error_type: type[Exception]
    for error_type in (TemplateNotFound, AudienceNotFound, ChannelNotFound, UserNotFound):

        @app.exception_handler(error_type)
        async def _not_found(request: Request, exc: Exception) -> JSONResponse:
            return coded(request, 404, str(exc))

    for error_type in (
        TemplateError,
        EnrollmentError,
        AudienceError,
        ChannelError,
        UserError,
        AuthoringError,
    ):

        @app.exception_handler(error_type)
        async def _conflict(request: Request, exc: Exception) -> JSONResponse:
            return coded(request, 409, str(exc))

    for error_type in (InvalidLogQuery, InvalidStatsQuery):

        @app.exception_handler(error_type)
        async def _bad_query(_: Request, exc: InvalidLogQuery | InvalidStatsQuery) -> JSONResponse:
            # FastAPI's own 422 shape, naming the query parameter
            return JSONResponse(
                status_code=422,
                content={
                    "detail": [
                        {"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}
                    ]
                },
            )

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
        if wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        return coded(request, 401, str(exc), {"WWW-Authenticate": 'Bearer realm="sopbot"'})

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if wants_html(request):
            return _error_page(request, 403, str(exc))
        return coded(request, 403, str(exc))

    # Input the database cannot hold (an id past 2**63, found by fuzzing the
    # OpenAPI document) is the caller's mistake, not a 500.
    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        detail = f"a number in the request is out of range: {exc}"
        return coded(request, 422, detail, code="number_out_of_range")

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        reason = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
        detail = f"a value in the request does not fit: {reason}"
        return coded(request, 422, detail, code="value_does_not_fit")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # a route's own refusal, or the router's (unknown address 404, method 405)
        if exc.status_code in (404, 405) and wants_html(request):
            return _error_page(request, exc.status_code, str(exc.detail))
        return coded(request, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, but bounded and always encodable, whatever was sent,
        # with a code and a message in the caller's language on top.
        problems = [_bounded_problem(e) for e in exc.errors()[:MAX_PROBLEMS]]
        body = error_codes.validation_body(problems, request_locale(request))
        return JSONResponse(status_code=422, content=body)

    _document_validation_errors(app)


MAX_PROBLEMS = 50  # problems listed in one 422


def request_locale(request: Request) -> str:
    """The caller's language: ``?lang=`` or the UI's language cookie, else
    Accept-Language (``zh*`` or ``en*``), else the workspace default (zh_CN)."""
    from api.i18n import LANG_COOKIE, LOCALES

    for value in (request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)):
        if value in LOCALES:
            return str(value)
    accept = request.headers.get("accept-language", "").strip().lower()
    if accept.startswith("zh"):
        return error_codes.ZH
    if accept.startswith("en"):
        return error_codes.EN
    default = getattr(getattr(request.app.state, "settings", None), "ui_language", None)
    return error_codes.EN if default == error_codes.EN else error_codes.ZH


def coded(
    request: Request,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    *,
    code: str | None = None,
) -> JSONResponse:
    """An error answer: ``detail`` (the domain's own text) with ``code``, ``params``
    and ``message`` in the caller's language (``api.error_codes``)."""
    locale = request_locale(request)
    body = error_codes.error_body(detail, status, locale)
    if code is not None:
        body.update(code=code, params={}, message=error_codes.render(code, {}, locale))
    return JSONResponse(status_code=status, content=body, headers=headers)


def _error_page(request: Request, status: int, detail: str) -> Response:
    from api.views import render

    locale = request_locale(request)
    body = error_codes.error_body(detail, status, locale)
    return render(
        request, "ui/error.html", {"message": body["message"], "code": status}, status_code=status
    )


MAX_ECHO = 200  # characters of the input echoed per problem


def _bounded_text(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates replaced."""
    clipped = text[:limit] + ("…" if len(text) > limit else "")
    return clipped.encode("utf-8", "replace").decode("utf-8")


def _bounded_value(value: Any) -> Any:
    """What a 422 may echo of an input: short, JSON-encodable, valid Unicode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _bounded_text(value)
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return _bounded_text(type(value).__name__)


def _bounded_problem(error: Any) -> dict[str, Any]:
    problem: dict[str, Any] = {
        "type": _bounded_text(str(error.get("type", "value_error"))),
        "loc": [_bounded_value(part) for part in error.get("loc", ())][:20],
        "msg": _bounded_text(str(error.get("msg", "")), 500),
    }
    if "input" in error:
        problem["input"] = _bounded_value(error["input"])
    if isinstance(error.get("ctx"), dict):
        problem["ctx"] = {str(k)[:50]: _bounded_value(v) for k, v in error["ctx"].items()}
    return problem


# ``detail`` of a batch refused as a whole (POST /api/events, /api/contacts/import):
# what was wrong with which item, and that nothing was applied.
BATCH_REPORT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["message", "errors"],
}


def _document_validation_errors(app: FastAPI) -> None:
    """A 422 here is FastAPI's (``detail``: a list of problems), a domain one
    (``detail``: the message, ``errors``: ``[{loc, msg}]``, see ``_invalid``) or a
    refused batch's report (``detail``: ``BATCH_REPORT``); say so in the OpenAPI
    document, so clients and schema checks expect all three."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        shape = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if shape is not None:
            listed = shape["properties"].get("detail", {"type": "array"})
            shape["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [
                    {k: v for k, v in listed.items() if k != "title"},
                    {"type": "string"},
                    BATCH_REPORT,
                ],
            }
            shape["properties"]["errors"] = {
                "title": "Errors",
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}},
                },
            }
        _document_error_answers(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# Open routes (api.app): no login, so no 401/403 and no security scheme.
PUBLIC_PATHS = ("/healthz", "/metrics", "/api/wecom/callback")
_MESSAGE = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "params": {"type": "object"},
                "message": {"type": "string"},
            },
        }
    }
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _document_error_answers(schema: dict[str, Any]) -> None:
    """The answers every route may give besides its own (the handlers above and
    api.guards), in the OpenAPI document: 401/403 where a login is needed, 404
    for an unknown id or external id (in the path, query or body), 409 for a
    change the current state refuses, 400/413 for an unreadable or too large body."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            answers = operation["responses"]
            extra: dict[str, dict[str, Any]] = {
                "404": {"description": "an id or external id named is unknown", "content": _MESSAGE}
            }
            if path in PUBLIC_PATHS:
                operation.pop("security", None)
            else:
                extra["401"] = {"description": "not logged in", "content": _MESSAGE}
                extra["403"] = {"description": "the role does not allow it", "content": _MESSAGE}
            if method != "get":
                extra["409"] = {"description": "refused in the current state", "content": _MESSAGE}
            if "requestBody" in operation:
                extra["400"] = {"description": "the body cannot be read", "content": _MESSAGE}
                extra["413"] = {"description": "the body is over the size limit", "content": _TEXT}
            for code, answer in extra.items():
                answers.setdefault(code, answer)


def wants_html(request: Request) -> bool:
    """UI pages answer in HTML; /api and anything asking for JSON in JSON."""
    path = request.url.path
    if path.startswith(("/api/", "/docs", "/openapi", "/redoc", "/healthz")):
        return False
    return "json" not in request.headers.get("accept", "")
