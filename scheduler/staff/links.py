"""Signed, expiring links to a staff member's inbox (no login).

A token is ``<account id>.<expiry unix seconds>.<signature>``; the signature is
an HMAC-SHA256 of the first two parts with the workspace secret key, so a
staff member cannot change whose inbox it opens nor extend it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import String, column, select, table
from sqlmodel import Session

from sopbot.db import JSONType, UTCDateTime
from sopbot.settings import Settings
from sopbot.sql import insert_of


class LinkRefused(ValueError):
    """The link is not valid: ``expired`` tells a stale link from a forged one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class StaffLink:
    account_id: int
    expires_at: datetime


def _signature(key: str, payload: str) -> str:
    digest = hmac.new(
        key.encode("utf-8"), b"staff-inbox:" + payload.encode("ascii"), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def sign(key: str, account_id: int, expires_at: datetime) -> str:
    """The token opening ``account_id``'s inbox until ``expires_at``."""
    payload = f"{int(account_id)}.{int(expires_at.timestamp())}"
    return f"{payload}.{_signature(key, payload)}"


def verify(key: str, token: str, now: datetime) -> StaffLink:
    """The link's account, or :class:`LinkRefused` (tampered, malformed, expired)."""
    parts = (token or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise LinkRefused("the link is incomplete or has been changed")
    payload = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_signature(key, payload), parts[2]):
        raise LinkRefused("the link has been changed")
    expires_at = datetime.fromtimestamp(int(parts[1]), UTC)
    if now >= expires_at:
        raise LinkRefused("the link has expired", expired=True)
    return StaffLink(int(parts[0]), expires_at)


def inbox_url(settings: Settings, key: str, account_id: int, now: datetime) -> str:
    """The inbox address a digest carries, valid ``staff_link_hours``."""
    token = sign(key, account_id, now + timedelta(hours=settings.staff_link_hours))
    return f"{settings.public_base()}/staff/inbox?{urlencode({'t': token})}"


# The operator UI's workspace settings table (api.users.models.WorkspaceSetting),
# named here because scheduler code does not import the api package.
_SETTINGS = table(
    "workspace_settings",
    column("key", String),
    column("value", JSONType),
    column("updated_at", UTCDateTime),
)


def workspace_key(session: Session, settings: Settings, now: datetime) -> str:
    """The workspace secret key (configured, else the one stored on first use,
    insert-or-keep: the same key the operator UI signs its sessions with)."""
    if settings.secret_key:
        return settings.secret_key
    read = select(_SETTINGS.c.value).where(_SETTINGS.c.key == "secret_key")
    stored = session.execute(read).scalar()
    if not stored:
        session.execute(
            insert_of(session, _SETTINGS)  # type: ignore[arg-type]
            .values(key="secret_key", value=secrets.token_urlsafe(48), updated_at=now)
            .on_conflict_do_nothing()
        )
        stored = session.execute(read).scalar()
    return str(stored)
