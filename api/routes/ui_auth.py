"""Logging in and out, the one-time setup of the first admin, the language switch."""

from __future__ import annotations

import math
from urllib.parse import urlparse

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api import auth
from api.deps import ClockDep, SessionDep
from api.i18n import LANG_COOKIE, LOCALES
from api.users import service as users_service
from api.views import error_text, render, translator

router = APIRouter(include_in_schema=False)


def _safe_next(value: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not value:
        return "/"
    parsed = urlparse(value)
    if parsed.scheme or parsed.netloc or not value.startswith("/") or value.startswith("//"):
        return "/"
    return value


def _login_page(
    request: Request, *, error: str | None = None, username: str = "", next_url: str = "/"
) -> HTMLResponse:
    placeholder = HTMLResponse("")
    token = auth.login_csrf(request, placeholder)
    response = render(
        request,
        "ui/login.html",
        {"error": error, "username": username, "next": next_url, "login_csrf": token},
        status_code=401 if error else 200,
    )
    for key, value in placeholder.headers.items():
        if key == "set-cookie":
            response.headers.append(key, value)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    username: str = Form(""),
    password: str = Form(""),
    csrf_token: str = Form(""),
    next: str = Form("/"),
) -> Response:
    auth.check_login_csrf(request, csrf_token)
    now = clock.now()
    _ = translator(request)
    throttle = auth.login_throttle(request)
    address = request.client.host if request.client else None
    wait = throttle.wait(username, address, now)
    if wait is not None:
        minutes = max(1, math.ceil(wait.total_seconds() / 60))
        page = _login_page(
            request,
            error=_("Too many failed logins. Try again in %(minutes)d minutes.")
            % {"minutes": minutes},
            username=username,
            next_url=_safe_next(next),
        )
        page.status_code = 429
        page.headers["Retry-After"] = str(int(wait.total_seconds()) + 1)
        return page
    user = users_service.authenticate(session, username, password, now)
    if user is None:
        throttle.failed(username, address, now)
        return _login_page(
            request,
            error=_("Wrong username or password, or the account is disabled."),
            username=username,
            next_url=_safe_next(next),
        )
    throttle.succeeded(username)
    raw = users_service.start_session(session, user, now, auth.session_lifetime(request))
    principal = auth.Principal.of(user, "session")
    auth.record(request, session, principal, "user.login", object_kind="user", object_id=user.id)
    response = RedirectResponse(_safe_next(next), status_code=303)
    auth.set_session_cookie(request, response, raw)
    return response


@router.post("/logout")
def logout(request: Request, me: auth.CurrentUser, session: SessionDep) -> Response:
    if me.session_id:
        users_service.end_session(session, me.session_id)
    auth.record(request, session, me, "user.logout", object_kind="user", object_id=me.user_id)
    response = RedirectResponse("/login", status_code=303)
    auth.clear_session_cookie(response)
    return response


@router.get("/setup", response_class=HTMLResponse)
def setup_form(request: Request, session: SessionDep, token: str = "") -> Response:
    if users_service.has_users(session):
        return RedirectResponse("/login", status_code=303)
    placeholder = HTMLResponse("")
    login_token = auth.login_csrf(request, placeholder)
    response = render(
        request,
        "ui/setup.html",
        {"token": token, "username": "admin", "login_csrf": login_token, "error": None},
    )
    for key, value in placeholder.headers.items():
        if key == "set-cookie":
            response.headers.append(key, value)
    return response


@router.post("/setup")
def setup(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    token: str = Form(""),
    username: str = Form(""),
    password: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    auth.check_login_csrf(request, csrf_token)
    now = clock.now()
    try:
        user = users_service.complete_setup(session, token, username, password, now)
    except users_service.UserError as exc:
        return render(
            request,
            "ui/setup.html",
            {
                "token": token,
                "username": username,
                "login_csrf": csrf_token,
                "error": error_text(request, exc),
            },
            status_code=422,
        )
    principal = auth.Principal.of(user, "session")
    auth.record(request, session, principal, "user.setup", object_kind="user", object_id=user.id)
    raw = users_service.start_session(session, user, now, auth.session_lifetime(request))
    response = RedirectResponse("/", status_code=303)
    auth.set_session_cookie(request, response, raw)
    return response


@router.get("/lang")
def switch_language(to: str, next: str | None = None) -> Response:
    """Remember the UI language in a cookie (a year) and go back."""
    response = RedirectResponse(_safe_next(next), status_code=303)
    if to in LOCALES:
        response.set_cookie(LANG_COOKIE, to, max_age=365 * 86400, samesite="lax", path="/")
    return response
