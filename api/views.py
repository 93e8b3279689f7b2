"""Rendering the operator UI: one Jinja environment per language, the layout's
context (who is logged in, the CSRF token, the nav, the workspace zone) and the
labels of statuses and kinds in the operators' words (DOMAIN.md)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api import error_codes
from api.auth import Permission, Principal
from api.i18n import N_, environment, gettext_for, negotiate
from scheduler.analytics import log
from sop_templates import wording
from sop_templates.schemas import RENDERED_FIELDS

STATUS_LABELS: dict[str, str] = {
    # deliveries
    "scheduled": N_("Scheduled"),
    "claimed": N_("Claimed"),
    "sending": N_("Sending"),
    "sent": N_("Sent"),
    "failed": N_("Failed"),
    "skipped": N_("Skipped"),
    "cancelled": N_("Cancelled"),
    "missed": N_("Missed"),
    "unknown": N_("Unknown outcome"),
    "awaiting_staff": N_("Awaiting staff"),
    "done": N_("Done by staff"),
    "skipped_by_staff": N_("Skipped by staff"),
    # templates
    "draft": N_("Draft"),
    "pending_approval": N_("Pending approval"),
    "published": N_("Published"),
    "paused": N_("Paused"),
    "archived": N_("Archived"),
    # reviews
    "editing": N_("Editing"),
    "pending": N_("Waiting for approval"),
    "approved": N_("Approved"),
    "rejected": N_("Rejected"),
    # enrollments
    "active": N_("Active"),
    "exited": N_("Exited"),
    "completed": N_("Completed"),
    # breakers
    "closed": N_("Healthy"),
    "open": N_("Paused (breaker open)"),
    "half_open": N_("Trying again"),
    # targets
    "deleted": N_("Deleted"),
    "blocked": N_("Blocked"),
    "unsubscribed": N_("Unsubscribed"),
    "dissolved": N_("Dissolved"),
}

KIND_LABELS: dict[str, str] = {
    "contact": N_("Contact"),
    "group": N_("Group chat"),
    "offset": N_("After joining"),
    "day_at": N_("Day N at HH:MM"),
    "at": N_("At a set time"),
    "cron": N_("Recurring (cron)"),
    "join": N_("Friend-added time"),
    "tag": N_("Tagged time"),
    "fixed": N_("Fixed start time"),
    "send": N_("Send automatically"),
    "task": N_("Mass-send task (staff confirm)"),
    "remind": N_("Remind staff to send"),
    "welcome": N_("Welcome message (WeCom)"),
    "moment": N_("Moment (WeCom)"),
    "text": N_("Text"),
    "image": N_("Image"),
    "link": N_("Link"),
    "miniprogram": N_("Mini-program"),
    "file": N_("File"),
    "video": N_("Video"),
    "new_friends": N_("New friends"),
    "tagged": N_("Tagged customers"),
    "groups": N_("Group chats"),
    "admin": N_("Admin"),
    "operator": N_("Operator"),
    "approver": N_("Approver"),
    "analyst": N_("Analyst"),
    "keep": N_("Keep them on their version"),
    "move": N_("Move pending touchpoints to the new version"),
    "never": N_("Never"),
    "after_finish": N_("After finishing"),
    "always": N_("Always (restart)"),
    "defer": N_("Defer"),
    "skip": N_("Skip"),
}

NAV = (
    ("/", N_("Dashboard"), Permission.READ),
    ("/templates", N_("SOP templates"), Permission.READ),
    ("/contacts", N_("Contacts"), Permission.READ),
    ("/groups", N_("Group chats"), Permission.READ),
    ("/segments", N_("Segments"), Permission.READ),
    ("/calendar", N_("Calendar"), Permission.READ),
    ("/materials", N_("Materials"), Permission.READ),
    ("/log", N_("Delivery log"), Permission.READ),
    ("/report", N_("Reports"), Permission.READ),
    ("/channels", N_("Channels"), Permission.READ),
    ("/audit", N_("Audit log"), Permission.READ),
    ("/users", N_("Users"), Permission.ADMIN),
    ("/settings", N_("Settings"), Permission.ADMIN),
)


def zone_of(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.default_timezone)


def locale_of(request: Request) -> str:
    return negotiate(request, request.app.state.settings.ui_language)


def error_text(request: Request, exc: Exception) -> str:
    """A refusal shown on a page, in the user's language (``api.error_codes``):
    a domain error by its code, a validation error by its first problem; text
    that is already Chinese is kept. Never the exception's English text."""
    from pydantic import ValidationError

    from api import error_codes

    locale = locale_of(request)
    if isinstance(exc, ValidationError):
        problems: list[Any] = list(exc.errors()) or [{}]
        first = problems[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        code, params = error_codes.classify(where, str(first.get("msg", "")))
        return error_codes.render(code, params, locale, where)
    text = str(exc)
    if re.search(r"[\u3400-\u9fff]", text) and not re.search(r"[A-Za-z]{4,}", text):
        return text
    code, params = error_codes.classify_error(text, 409)
    return error_codes.render(code, params, locale)


def translator(request: Request) -> Any:
    return gettext_for(locale_of(request))


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    principal: Principal | None = None,
) -> HTMLResponse:
    locale = locale_of(request)
    me = principal or getattr(request.state, "principal", None)
    gettext = gettext_for(locale)
    part_labels = {kind: gettext(KIND_LABELS[kind]) for kind in RENDERED_FIELDS}
    path = request.url.path
    base: dict[str, Any] = {
        "request": request,
        "me": me,
        "csrf": me.csrf_token if me is not None else None,
        "zone": zone_of(request),
        "path": path,
        "nav": [
            (href, label, href == path or (href != "/" and path.startswith(href)))
            for href, label, permission in NAV
            if me is not None and me.can(permission)
        ],
        "content_text": lambda parts: log.content_text(parts, part_labels),
        "status_label": lambda s: gettext(STATUS_LABELS.get(s, s)) if s else "",
        "kind_label": lambda k: gettext(KIND_LABELS.get(k, k)) if k else "",
        # a contact or group that is "active" is simply there (正常)
        "target_label": lambda s: (
            gettext(N_("Normal")) if s == "active" else gettext(STATUS_LABELS.get(s, s))
        ),
        # one vocabulary for timings, policies and reasons (sop_templates.wording)
        "timing_text": lambda t, anchor="join", target="contact": wording.timing_text(
            t, locale, anchor=anchor, target=target
        ),
        "reason_text": lambda r: wording.reason_text(r, locale),
        "cap_text": lambda c: wording.cap_text(c, locale),
        "quiet_text": lambda q, policy="defer": wording.quiet_text(q, locale, policy),
        "anchor_after": lambda a, t: wording.anchor_after(a, t, locale),
        "problem_text": lambda message, location="": error_codes.render(
            *error_codes.classify(location, message), locale, location
        ),
        "anchor_day_one": lambda a, t: wording.anchor_day_one(a, t, locale),
        "can": (lambda p: me is not None and me.can(p)),
        "P": Permission,
        "htmx": is_htmx(request),
        "lang_url": lambda lang: (
            f"/lang?to={lang}&next={quote(str(request.url.path) + ('?' + request.url.query if request.url.query else ''))}"
        ),
    }
    html = environment(locale).get_template(name).render({**base, **(context or {})})
    return HTMLResponse(html, status_code=status_code)


def redirect(request: Request, url: str) -> Response:
    """After a successful form post: a full navigation, also for htmx."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
