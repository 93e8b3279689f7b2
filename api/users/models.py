"""Users, their API tokens and UI sessions, the audit log and workspace settings.

Secrets are never stored in clear: passwords as scrypt hashes, API tokens and
session ids as SHA-256 digests (they are long random values, so a plain digest
is enough and lets them be looked up by value).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=64)
    display_name: str = Field(default="", max_length=200)
    # comma-separated: admin, operator, approver, analyst (one user may hold several)
    roles: str = Field(max_length=200)
    password_hash: str = Field(max_length=300)
    active: bool = True
    # the contact that receives this user's own test sends (its external id)
    test_contact: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r for r in self.roles.split(",") if r)


class ApiToken(SQLModel, table=True):
    """A token for scripts: ``Authorization: Bearer sopbot_…``; acts as its user."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)  # shown in lists so a token can be recognised
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class UserSession(SQLModel, table=True):
    """A browser login. The cookie holds the random id (signed); we keep its digest."""

    __tablename__ = "user_sessions"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    token_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class AuditEntry(SQLModel, table=True):
    """Who changed what, when (the audit log)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_object", "object_kind", "object_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    user_id: int | None = Field(default=None)
    username: str = Field(default="", max_length=64)
    action: str = Field(max_length=64)  # template.publish, user.create, api.post, ...
    object_kind: str = Field(default="", max_length=32)
    object_id: str | None = Field(default=None, max_length=64)
    summary: str = Field(default="", max_length=1000)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


class WorkspaceSetting(SQLModel, table=True):
    """Workspace-wide values set at run time (require approval, the generated
    secret key, the one-time setup token's digest)."""

    __tablename__ = "workspace_settings"

    key: str = Field(primary_key=True, max_length=64)
    value: Any = Field(sa_column=Column(JSONType, nullable=True))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
