"""Who is calling, and may they: sessions, API tokens, roles and CSRF.

* Browsers log in with a password and get a session cookie: a random id, signed
  with the workspace secret (HMAC), ``HttpOnly``, ``SameSite=Lax``, ``Secure``
  when ``SOPBOT_COOKIE_SECURE`` is set. Only the id's digest is stored, so a
  session can be ended server-side (logout, user deactivated).
* Scripts send ``Authorization: Bearer sopbot_…`` (API tokens, stored hashed).
* Every state-changing request made with the cookie carries a CSRF token bound
  to the session (form field ``csrf_token`` or header ``X-CSRF-Token``); token
  requests need none (a browser never adds that header by itself). The login
  form, before there is a session, uses a double-submit cookie.
* Routes declare the permission they need (``require(Permission.AUTHOR)``);
  routers of other packages are wrapped in ``gate(...)`` in ``create_app``:
  reads need ``read``, changes the permission given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from api.users import audit
from api.users import service as users_service
from api.users.models import ApiToken, User
from api.users.throttle import LoginThrottle
from sopbot.db import is_busy, reader, session_scope, unless_busy

SESSION_COOKIE = "sopbot_session"
LOGIN_CSRF_COOKIE = "sopbot_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Permission = users_service.Permission

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="APIToken",
    description="An API token (Users → API tokens, or POST /api/tokens): `Bearer sopbot_…`",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="SessionCookie",
    description="The browser session after logging in at /login (changes need X-CSRF-Token)",
)


class NotAuthenticated(Exception):
    """No valid session or token."""

    def __init__(self, message: str = "log in, or send an API token as 'Authorization: Bearer …'"):
        super().__init__(message)


class Forbidden(Exception):
    """Authenticated, but not allowed (role or CSRF); the message says why."""


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    display_name: str
    roles: frozenset[str]
    via: str  # "session" or "token"
    session_id: str | None = None  # the raw session id (for the CSRF token)
    csrf_token: str | None = None

    @classmethod
    def of(cls, user: User, via: str, **session: Any) -> Principal:
        """The principal of a stored ``user`` signed in ``via`` a session or token."""
        assert user.id is not None  # a stored row
        return cls(user.id, user.username, user.display_name, user.role_set, via, **session)

    @property
    def permissions(self) -> frozenset[str]:
        return users_service.permissions_of(self.roles)

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(self.user_id, self.username)


# -- signing ------------------------------------------------------------------------


def load_secret_key(engine: Engine, configured: str | None, now: Any) -> str:
    """The workspace secret (configured, or generated once and stored); read at
    start-up so no request ever waits for it."""
    with session_scope(engine) as session:
        return users_service.secret_key(session, configured, now)


def secret_key(request: Request) -> str:
    key = getattr(request.app.state, "secret_key", None)
    if key is None:  # an app built without create_app's lifespan
        key = load_secret_key(
            request.app.state.engine,
            request.app.state.settings.secret_key,
            request.app.state.clock.now(),
        )
        request.app.state.secret_key = key
    return key  # type: ignore[no-any-return]


def _mac(key: str, message: str) -> str:
    digest = hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(key: str, value: str) -> str:
    return f"{value}.{_mac(key, 'session:' + value)}"


def unsign(key: str, signed: str) -> str | None:
    value, _, mac = signed.rpartition(".")
    if not value or not hmac.compare_digest(mac, _mac(key, "session:" + value)):
        return None
    return value


def csrf_for(key: str, session_id: str) -> str:
    return _mac(key, "csrf:" + session_id)


# -- resolving the caller ----------------------------------------------------------------


def _resolve(request: Request, bearer: str | None, cookie: str | None) -> Principal | None:
    engine: Engine = request.app.state.engine
    now = request.app.state.clock.now()
    if bearer is not None:
        with Session(reader(engine)) as session:
            found = users_service.find_token(session, bearer)
        if found is None:
            raise NotAuthenticated("the API token is not valid (unknown or revoked)")
        token, token_user = found
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            # Never wait for SQLite's write lock for this (a 500-event post holds
            # it for a tenth of a second): when it is busy, a later request records it.
            try:
                with session_scope(unless_busy(engine)) as session:
                    users_service.touch_token(session, token.id, now)  # type: ignore[arg-type]
            except OperationalError as exc:
                if not is_busy(exc):
                    raise
        return Principal.of(token_user, "token")
    if cookie:
        key = secret_key(request)
        raw = unsign(key, cookie)
        if raw is None:
            return None
        with Session(reader(engine)) as session:
            user = users_service.user_for_session(session, raw, now)
        if user is None:
            return None
        return Principal.of(user, "session", session_id=raw, csrf_token=csrf_for(key, raw))
    return None


def optional_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> Principal | None:
    """The caller, or None. A bad bearer token is an error (not anonymous)."""
    if hasattr(request.state, "principal"):
        return request.state.principal  # type: ignore[no-any-return]
    principal = _resolve(request, bearer.credentials if bearer else None, cookie)
    request.state.principal = principal
    return principal


async def _check_csrf(request: Request, principal: Principal) -> None:
    if request.method in SAFE_METHODS or principal.via != "session":
        return
    sent = request.headers.get(CSRF_HEADER)
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        raise Forbidden("the form's security token (CSRF) is missing or wrong; reload the page")


async def current_user(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal:
    """Any logged-in user (CSRF-checked for changes made from the browser)."""
    if principal is None:
        raise NotAuthenticated()
    await _check_csrf(request, principal)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require(permission: str) -> Callable[..., Any]:
    """A dependency: the caller must hold ``permission``."""

    async def dependency(principal: CurrentUser) -> Principal:
        if not principal.can(permission):
            raise Forbidden(_denied(principal, permission))
        return principal

    dependency.__name__ = f"require_{permission}"
    return dependency


def gate(
    write: str = Permission.AUTHOR, read: str = Permission.READ, public: tuple[str, ...] = ()
) -> Callable[..., Any]:
    """A router-wide dependency: safe methods need ``read``, others ``write``;
    paths in ``public`` need nothing (health checks)."""

    async def dependency(
        request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
    ) -> Principal | None:
        if request.url.path in public:
            return principal
        if principal is None:
            raise NotAuthenticated()
        await _check_csrf(request, principal)
        needed = read if request.method in SAFE_METHODS else write
        if not principal.can(needed):
            raise Forbidden(_denied(principal, needed))
        return principal

    dependency.__name__ = f"gate_{read}_{write}"
    return dependency


_NEEDS = {
    Permission.READ: "any role",
    Permission.AUTHOR: "the operator or admin role",
    Permission.APPROVE: "the approver or admin role",
    Permission.ADMIN: "the admin role",
}


def _denied(principal: Principal, permission: str) -> str:
    roles = ", ".join(sorted(principal.roles)) or "none"
    return f"this needs {_NEEDS.get(permission, permission)}; {principal.username} has: {roles}"


Reader = Annotated[Principal, Depends(require(Permission.READ))]
Author = Annotated[Principal, Depends(require(Permission.AUTHOR))]
Approver = Annotated[Principal, Depends(require(Permission.APPROVE))]
Admin = Annotated[Principal, Depends(require(Permission.ADMIN))]


# -- cookies ------------------------------------------------------------------------------


def set_session_cookie(request: Request, response: Response, raw: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        SESSION_COOKIE,
        sign(secret_key(request), raw),
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def login_csrf(request: Request, response: Response) -> str:
    """The double-submit token for the login and setup forms (no session yet)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.cookie_secure,
        path="/",
    )
    return token


def check_login_csrf(request: Request, sent: str | None) -> None:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise Forbidden("the form's security token (CSRF) is missing or wrong; reload the page")


def login_throttle(request: Request) -> LoginThrottle:
    """This app's login throttle (api.users.throttle), made on first use."""
    state = request.app.state
    throttle = getattr(state, "login_throttle", None)
    if throttle is None:
        settings = state.settings
        throttle = LoginThrottle(
            settings.login_max_failures, timedelta(minutes=settings.login_window_minutes)
        )
        state.login_throttle = throttle
    return throttle  # type: ignore[no-any-return]


def session_lifetime(request: Request) -> timedelta:
    return timedelta(hours=request.app.state.settings.session_hours)


def mark_audited(request: Request) -> None:
    """The route recorded its own audit entry; the generic one is not needed."""
    request.state.audited = True


def record(
    request: Request,
    session: Session,
    principal: Principal | None,
    action: str,
    *,
    object_kind: str = "",
    object_id: int | str | None = None,
    summary: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write an audit entry in the request's transaction."""
    audit.record(
        session,
        principal.actor if principal else None,
        action,
        request.app.state.clock.now(),
        object_kind=object_kind,
        object_id=object_id,
        summary=summary,
        detail=detail,
    )
    mark_audited(request)


__all__ = [
    "Admin",
    "ApiToken",
    "Approver",
    "Author",
    "CurrentUser",
    "Forbidden",
    "NotAuthenticated",
    "Permission",
    "Principal",
    "Reader",
    "current_user",
    "gate",
    "optional_principal",
    "require",
]
