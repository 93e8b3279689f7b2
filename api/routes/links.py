"""Tracked short links: ``GET /{prefix}/{token}`` records the click and
redirects (302) to the link's address. Open to anyone who has the link (the
token is the secret); it answers before anything slow could happen."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from api.deps import ClockDep, SessionDep
from scheduler.flows import goals
from scheduler.outcomes import links

NOT_FOUND = "链接无效或已失效。"


def build_router(prefix: str) -> APIRouter:
    """The redirect route under ``/{prefix}`` (``Settings.link_prefix``)."""
    router = APIRouter(tags=["links"])

    @router.get(
        f"/{prefix}/{{token}}",
        response_class=RedirectResponse,
        status_code=302,
        responses={404: {"description": "unknown link"}},
        summary="Open a tracked link",
    )
    def open_link(token: str, request: Request, session: SessionDep, clock: ClockDep) -> Response:
        """Record a ``link_clicked`` (person, repeat or bot/preview) and redirect."""
        now = clock.now()
        click = links.record_click(session, token, request.headers.get("user-agent", ""), now)
        if click is None:
            return PlainTextResponse(NOT_FOUND, status_code=404)
        if not click.bot and not click.repeat:
            goals.record_click_event(
                session,
                template_id=click.link.template_id,
                target_kind=click.link.target_kind,
                target_id=click.link.target_id,
                touchpoint=click.link.touchpoint_name,
                url=click.url,
                at=now,
            )
        return RedirectResponse(click.url, status_code=302)

    return router
