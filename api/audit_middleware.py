"""Records every successful change that no route recorded itself.

Routes of the operator UI and the template/user APIs write specific audit
entries (``auth.record``). Routers of other packages (channels, events, ...)
do not know about the audit log; this middleware writes ``api.<method>`` with
the path for their successful POST/PUT/PATCH/DELETE, so the log misses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.users import audit
from sopbot.db import session_scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuditMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # UI routes record their own entries (an editor post that only adds a
        # row to the form changes nothing); the JSON API of other packages does not.
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # request.state of the route, shared
        app = scope["app"]
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        parts = [p for p in path.split("/") if p and p != "api"]

        def write() -> None:
            principal = state.get("principal")
            if principal is None or state.get("audited"):
                return
            with session_scope(app.state.engine) as session:
                audit.record(
                    session,
                    principal.actor,
                    f"api.{scope['method'].lower()}",
                    app.state.clock.now(),
                    object_kind=parts[0][:32] if parts else "",
                    object_id=parts[1][:64] if len(parts) > 1 else None,
                    summary=f"{scope['method']} {path}",
                    detail={"query": query} if query else {},
                )

        async def send_after_audit(message: dict[str, Any]) -> None:
            # Recorded before the answer starts: a client that got its 2xx finds
            # the change in the audit log too.
            if message["type"] == "http.response.start" and message["status"] < 400:
                await asyncio.to_thread(write)
            await send(message)

        await self.app(scope, receive, send_after_audit)
