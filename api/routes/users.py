"""Users, API tokens, workspace settings, the audit log and the dashboard (JSON)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api import auth
from api.auth import Admin, CurrentUser, Reader
from api.deps import ClockDep, EngineDep, SessionDep, SettingsDep
from api.users import audit
from api.users import service as users_service
from api.views import zone_of
from scheduler.operations import dashboard as dashboard_service

router = APIRouter(prefix="/api", tags=["users and settings"])


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    roles: list[str]
    active: bool
    test_contact: str | None
    created_at: datetime
    last_login_at: datetime | None


def _user_out(user: Any) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=sorted(user.role_set),
        active=user.active,
        test_contact=user.test_contact,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


class MeOut(BaseModel):
    id: int
    username: str
    display_name: str
    roles: list[str]
    permissions: list[str]
    via: str


@router.get("/me", response_model=MeOut)
def me(principal: CurrentUser) -> MeOut:
    """Who the token or session belongs to, and what it may do."""
    return MeOut(
        id=principal.user_id,
        username=principal.username,
        display_name=principal.display_name,
        roles=sorted(principal.roles),
        permissions=sorted(principal.permissions),
        via=principal.via,
    )


class UserIn(BaseModel):
    username: str = Field(min_length=2, max_length=64)
    password: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(min_length=1, description="admin, operator, approver, analyst")
    display_name: str = ""


class UserUpdate(BaseModel):
    roles: list[str] | None = None
    active: bool | None = None
    password: str | None = Field(None, max_length=200)
    display_name: str | None = None
    test_contact: str | None = Field(None, description="contact that gets your test sends")


@router.get("/users", response_model=list[UserOut])
def list_users(_: Admin, session: SessionDep) -> list[UserOut]:
    return [_user_out(u) for u in users_service.list_users(session)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserIn, request: Request, principal: Admin, session: SessionDep, clock: ClockDep
) -> UserOut:
    user = users_service.create_user(
        session,
        body.username,
        body.password,
        body.roles,
        clock.now(),
        display_name=body.display_name,
    )
    auth.record(
        request,
        session,
        principal,
        "user.create",
        object_kind="user",
        object_id=user.id,
        summary=f"{user.username} ({user.roles})",
    )
    return _user_out(user)


@router.patch("/users/{user_id}", response_model=UserOut)
def update_user(
    user_id: int,
    body: UserUpdate,
    request: Request,
    principal: Admin,
    session: SessionDep,
) -> UserOut:
    """Change roles, deactivate (ends sessions; tokens stop working), reset a password."""
    user = users_service.update_user(session, user_id, **body.model_dump(exclude_unset=True))
    changed = sorted(k for k in body.model_dump(exclude_unset=True) if k != "password")
    if body.password:
        changed.append("password")
    auth.record(
        request,
        session,
        principal,
        "user.update",
        object_kind="user",
        object_id=user_id,
        summary=f"{user.username}: {', '.join(changed)}",
    )
    return _user_out(user)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="what uses it, e.g. crm-sync")
    user_id: int | None = Field(None, description="admins may create a token for another user")


class TokenOut(BaseModel):
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once; store it now")


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    principal: CurrentUser,
    session: SessionDep,
    all_users: bool = Query(False, alias="all", description="admins: every user's tokens"),
) -> Any:
    owner = None if all_users and principal.can(auth.Permission.ADMIN) else principal.user_id
    return users_service.list_tokens(session, owner)


@router.post("/tokens", response_model=NewTokenOut, status_code=201)
def create_token(
    body: TokenIn, request: Request, principal: CurrentUser, session: SessionDep, clock: ClockDep
) -> NewTokenOut:
    """A new API token acting as you (or, for admins, as ``user_id``). The secret is
    in this answer only; sopbot keeps a hash."""
    owner = principal.user_id
    if body.user_id is not None and body.user_id != principal.user_id:
        if not principal.can(auth.Permission.ADMIN):
            raise auth.Forbidden("only an admin may create tokens for another user")
        owner = body.user_id
    new = users_service.create_token(session, owner, body.name, clock.now())
    auth.record(
        request,
        session,
        principal,
        "token.create",
        object_kind="token",
        object_id=new.token.id,
        summary=f"{new.token.name} ({new.token.prefix}…)",
        detail={"user_id": owner},
    )
    return NewTokenOut(**new.token.model_dump(), token=new.secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: int, request: Request, principal: CurrentUser, session: SessionDep, clock: ClockDep
) -> Any:
    """Revoke one of your tokens (admins: anyone's)."""
    owner = None if principal.can(auth.Permission.ADMIN) else principal.user_id
    token = users_service.revoke_token(session, token_id, clock.now(), owner_id=owner)
    auth.record(
        request,
        session,
        principal,
        "token.revoke",
        object_kind="token",
        object_id=token_id,
        summary=f"{token.name} ({token.prefix}…)",
    )
    return token


class WorkspaceOut(BaseModel):
    require_approval: bool
    timezone: str
    language: str


class WorkspaceIn(BaseModel):
    require_approval: bool


@router.get("/settings/workspace", response_model=WorkspaceOut)
def get_workspace(_: Reader, session: SessionDep, settings: SettingsDep) -> WorkspaceOut:
    return WorkspaceOut(
        require_approval=users_service.requires_approval(session, settings.require_approval),
        timezone=settings.default_timezone,
        language=settings.ui_language,
    )


@router.put("/settings/workspace", response_model=WorkspaceOut)
def put_workspace(
    body: WorkspaceIn,
    request: Request,
    principal: Admin,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> WorkspaceOut:
    """Require approval before publishing (or not)."""
    users_service.set_setting(
        session, users_service.REQUIRE_APPROVAL, body.require_approval, clock.now()
    )
    auth.record(
        request,
        session,
        principal,
        "settings.update",
        object_kind="settings",
        summary=f"require_approval={body.require_approval}",
    )
    return get_workspace(principal, session, settings)


class AuditOut(BaseModel):
    id: int
    at: datetime
    user_id: int | None
    username: str
    action: str
    object_kind: str
    object_id: str | None
    summary: str
    detail: dict[str, Any]


@router.get("/audit", response_model=list[AuditOut])
def list_audit(
    _: Reader,
    session: SessionDep,
    object_kind: str | None = None,
    object_id: str | None = None,
    user_id: int | None = None,
    before_id: int | None = Query(None, description="page back: the last id you saw"),
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    """The audit log, newest first: who changed what, when."""
    return audit.entries(
        session,
        object_kind=object_kind,
        object_id=object_id,
        user_id=user_id,
        before_id=before_id,
        limit=limit,
    )


@router.get("/dashboard")
def dashboard(
    request: Request,
    _: Reader,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> dict[str, Any]:
    """Sends today, failures, backlog, next sends, channel health (the dashboard)."""
    return asdict(
        dashboard_service.dashboard(session, engine, settings, clock.now(), zone_of(request))
    )
