"""Operator UI: users (admins), my account and my API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from api import auth
from api.auth import Admin, CurrentUser
from api.deps import ClockDep, FormDep, SessionDep
from api.users import service as users_service
from api.views import error_text, redirect, render, translator

router = APIRouter(include_in_schema=False)


# -- users --------------------------------------------------------------------------------


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, me: Admin, session: SessionDep, done: str = "") -> Response:
    _ = translator(request)
    return render(
        request,
        "ui/users.html",
        {
            "users": users_service.list_users(session),
            "roles": users_service.ROLES,
            "flash": _("Saved.") if done else None,
        },
    )


@router.post("/users")
def create_user(
    request: Request, form: FormDep, me: Admin, session: SessionDep, clock: ClockDep
) -> Response:
    try:
        with session.begin_nested():
            user = users_service.create_user(
                session,
                str(form.get("username") or ""),
                str(form.get("password") or ""),
                [str(r) for r in form.getlist("roles")],
                clock.now(),
                display_name=str(form.get("display_name") or ""),
            )
    except users_service.UserError as exc:
        return render(
            request,
            "ui/users.html",
            {
                "users": users_service.list_users(session),
                "roles": users_service.ROLES,
                "flash_error": error_text(request, exc),
                "new": {
                    "username": form.get("username"),
                    "display_name": form.get("display_name"),
                    "roles": form.getlist("roles"),
                },
            },
            status_code=422,
        )
    auth.record(
        request,
        session,
        me,
        "user.create",
        object_kind="user",
        object_id=user.id,
        summary=f"{user.username} ({user.roles})",
    )
    return redirect(request, "/users?done=created")


@router.post("/users/{user_id}")
def update_user(
    user_id: int, request: Request, form: FormDep, me: Admin, session: SessionDep
) -> Response:
    try:
        with session.begin_nested():
            user = users_service.update_user(
                session,
                user_id,
                roles=[str(r) for r in form.getlist("roles")],
                active=form.get("active") == "on",
                password=str(form.get("password") or "") or None,
            )
    except users_service.UserError as exc:
        return render(
            request,
            "ui/users.html",
            {
                "users": users_service.list_users(session),
                "roles": users_service.ROLES,
                "flash_error": error_text(request, exc),
            },
            status_code=422,
        )
    auth.record(
        request,
        session,
        me,
        "user.update",
        object_kind="user",
        object_id=user_id,
        summary=f"{user.username}: roles {user.roles}, active {user.active}",
    )
    return redirect(request, "/users?done=saved")


# -- my account and API tokens ------------------------------------------------------------


def _account(request: Request, session: Session, me: auth.Principal, **extra: Any) -> HTMLResponse:
    user = users_service.get_user(session, me.user_id)
    return render(
        request,
        "ui/account.html",
        {"user": user, "tokens": users_service.list_tokens(session, me.user_id), **extra},
        status_code=extra.pop("status", 200),
    )


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, me: CurrentUser, session: SessionDep) -> Response:
    return _account(request, session, me)


@router.post("/account")
def save_account(request: Request, form: FormDep, me: CurrentUser, session: SessionDep) -> Response:
    """Display name, test contact, password (the current one is asked again)."""
    _ = translator(request)
    new_password = str(form.get("new_password") or "")
    try:
        with session.begin_nested():
            if new_password:
                user = users_service.get_user(session, me.user_id)
                if not users_service.verify_password(
                    str(form.get("current_password") or ""), user.password_hash
                ):
                    raise users_service.UserError(_("The current password is wrong."))
            users_service.update_user(
                session,
                me.user_id,
                display_name=str(form.get("display_name") or ""),
                test_contact=str(form.get("test_contact") or ""),
                password=new_password or None,
            )
    except users_service.UserError as exc:
        return _account(request, session, me, flash_error=error_text(request, exc), status=422)
    auth.record(request, session, me, "user.update_self", object_kind="user", object_id=me.user_id)
    if new_password:  # sessions ended: log in again
        return redirect(request, "/login")
    return _account(request, session, me, flash=_("Saved."))


@router.post("/account/tokens")
def create_token(
    request: Request, form: FormDep, me: CurrentUser, session: SessionDep, clock: ClockDep
) -> Response:
    try:
        with session.begin_nested():
            new = users_service.create_token(
                session, me.user_id, str(form.get("name") or ""), clock.now()
            )
    except users_service.UserError as exc:
        return _account(request, session, me, flash_error=error_text(request, exc), status=422)
    auth.record(
        request,
        session,
        me,
        "token.create",
        object_kind="token",
        object_id=new.token.id,
        summary=f"{new.token.name} ({new.token.prefix}…)",
    )
    return _account(request, session, me, new_token=new.secret)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(
    token_id: int, request: Request, me: CurrentUser, session: SessionDep, clock: ClockDep
) -> Response:
    token = users_service.revoke_token(session, token_id, clock.now(), owner_id=me.user_id)
    auth.record(
        request,
        session,
        me,
        "token.revoke",
        object_kind="token",
        object_id=token_id,
        summary=token.name,
    )
    return redirect(request, "/account")
