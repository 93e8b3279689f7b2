"""Domain errors → HTTP answers with the message the domain wrote."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from audiences.service import AudienceError
from audiences.service import NotFound as AudienceNotFound
from channels.base import ChannelError
from channels.service import ChannelNotFound
from scheduler.service import EnrollmentError
from sop_templates.service import NotFound as TemplateNotFound
from sop_templates.service import TemplateError, TemplateValidationError


def install(app: FastAPI) -> None:
    @app.exception_handler(TemplateValidationError)
    async def _invalid(_: Request, exc: TemplateValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={
                "detail": str(exc),
                "errors": [{"loc": loc, "msg": msg} for loc, msg in exc.problems],
            },
        )

    for error_type in (TemplateNotFound, AudienceNotFound, ChannelNotFound):

        @app.exception_handler(error_type)
        async def _not_found(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(status_code=404, content={"detail": str(exc)})

    for error_type in (TemplateError, EnrollmentError, AudienceError, ChannelError):

        @app.exception_handler(error_type)
        async def _conflict(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(status_code=409, content={"detail": str(exc)})
