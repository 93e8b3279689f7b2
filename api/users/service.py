"""Users, roles, passwords, API tokens, UI sessions and workspace settings.

Roles and what they may do (``PERMISSIONS``):

* ``admin``    – everything: users, channels, workspace settings, and all below;
* ``operator`` – author templates, segments, contacts; publish, pause, archive;
* ``approver`` – approve (sign off) templates submitted for approval;
* ``analyst``  – read-only: templates, logs, stats.

Every role can read. One user may hold several roles (an operator who also
approves others' work); the approver of a template is never its author.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from api.users.models import ApiToken, User, UserSession, WorkspaceSetting
from sopbot.sql import insert_of

ROLES = ("admin", "operator", "approver", "analyst")


class Permission:
    READ = "read"  # see templates, audiences, logs, stats
    AUTHOR = "author"  # create/edit/publish/pause templates; contacts, segments, events
    APPROVE = "approve"  # sign off a template for publishing
    ADMIN = "admin"  # users, channels, workspace settings


PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({Permission.READ, Permission.AUTHOR, Permission.APPROVE, Permission.ADMIN}),
    "operator": frozenset({Permission.READ, Permission.AUTHOR}),
    "approver": frozenset({Permission.READ, Permission.APPROVE}),
    "analyst": frozenset({Permission.READ}),
}

TOKEN_PREFIX = "sopbot_"
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8


class UserError(ValueError):
    """A user/token request that cannot be carried out; the message says why."""


class UserNotFound(LookupError):
    pass


def permissions_of(roles: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for role in roles:
        out |= PERMISSIONS.get(role, frozenset())
    return frozenset(out)


def clean_roles(roles: Iterable[str]) -> str:
    chosen = [r.strip() for r in roles if r and r.strip()]
    unknown = sorted(set(chosen) - set(ROLES))
    if unknown:
        raise UserError(f"unknown role {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    if not chosen:
        raise UserError(f"a user needs at least one role: {', '.join(ROLES)}")
    return ",".join(r for r in ROLES if r in chosen)


# -- passwords ----------------------------------------------------------------------

# scrypt parameters (RFC 7914 interactive-login strength, ~16 MiB).
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- users --------------------------------------------------------------------------


def create_user(
    session: Session,
    username: str,
    password: str,
    roles: Iterable[str],
    now: datetime,
    *,
    display_name: str = "",
) -> User:
    """Create a user (password hashed with scrypt)."""
    username = username.strip()
    if not USERNAME.match(username):
        raise UserError("a username has 2-64 letters, digits or . _ - @")
    if session.exec(select(User).where(User.username == username)).first():
        raise UserError(f"a user named {username!r} already exists")
    _check_password(password)
    user = User(
        username=username,
        display_name=display_name.strip() or username,
        roles=clean_roles(roles),
        password_hash=hash_password(password),
        created_at=now,
    )
    session.add(user)
    session.flush()
    return user


def update_user(
    session: Session,
    user_id: int,
    *,
    roles: Iterable[str] | None = None,
    active: bool | None = None,
    password: str | None = None,
    display_name: str | None = None,
    test_contact: str | None = None,
) -> User:
    """Change what is given. Ending a user's access also ends their sessions and
    tokens; the last active admin cannot be removed."""
    user = get_user(session, user_id)
    was_admin = user.active and "admin" in user.role_set
    if roles is not None:
        user.roles = clean_roles(roles)
    if active is not None:
        user.active = active
    if display_name is not None:
        user.display_name = display_name.strip() or user.username
    if test_contact is not None:
        user.test_contact = test_contact.strip() or None
    if password:
        _check_password(password)
        user.password_hash = hash_password(password)
    if was_admin and ("admin" not in user.role_set or not user.active):
        others = [
            u
            for u in session.exec(select(User).where(User.active == True)).all()  # noqa: E712
            if "admin" in u.role_set and u.id != user.id
        ]
        if not others:
            raise UserError("this is the last active admin; make another user admin first")
    session.add(user)
    if not user.active or password:
        _end_sessions(session, user.id)  # type: ignore[arg-type]
    session.flush()
    return user


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(f"no user with id {user_id}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.id))).all())


def has_users(session: Session) -> bool:
    return session.exec(select(User.id)).first() is not None


def authenticate(session: Session, username: str, password: str, now: datetime) -> User | None:
    """The active user with this username and password, else None (same time
    spent either way, so a wrong username is not told apart by timing)."""
    user = session.exec(select(User).where(User.username == username.strip())).first()
    stored = user.password_hash if user else _dummy_hash()
    ok = verify_password(password, stored)
    if user is None or not ok or not user.active:
        return None
    user.last_login_at = now
    session.add(user)
    return user


@functools.cache
def _dummy_hash() -> str:
    """A hash to check an unknown username's password against (as slow as a real
    one); made on first use, not at import: starting a process hashes nothing."""
    return hash_password(secrets.token_urlsafe(16))


# -- API tokens ------------------------------------------------------------------------


@dataclass
class NewToken:
    token: ApiToken
    secret: str  # shown once, never stored


def create_token(session: Session, user_id: int, name: str, now: datetime) -> NewToken:
    """A new API token for ``user_id``. The secret is returned once; only its
    digest is stored."""
    get_user(session, user_id)
    name = name.strip()
    if not name or len(name) > 100:
        raise UserError("give the token a name (1-100 characters), e.g. the script using it")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user_id,
        name=name,
        token_hash=digest(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 4],
        created_at=now,
    )
    session.add(token)
    session.flush()
    return NewToken(token, secret)


def list_tokens(session: Session, user_id: int | None = None) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(col(ApiToken.id))
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return list(session.exec(stmt).all())


def revoke_token(
    session: Session, token_id: int, now: datetime, *, owner_id: int | None
) -> ApiToken:
    """Revoke a token (``owner_id``: only if it belongs to that user; None: any)."""
    token = session.get(ApiToken, token_id)
    if token is None or (owner_id is not None and token.user_id != owner_id):
        raise UserNotFound(f"no API token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = now
        session.add(token)
        session.flush()
    return token


def find_token(session: Session, secret: str) -> tuple[ApiToken, User] | None:
    """The live token with this secret and its active user, else None."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == digest(secret))).first()
    if token is None or token.revoked_at is not None:
        return None
    user = session.get(User, token.user_id)
    if user is None or not user.active:
        return None
    return token, user


def touch_token(session: Session, token_id: int, now: datetime) -> None:
    token = session.get(ApiToken, token_id)
    if token is not None:
        token.last_used_at = now
        session.add(token)


# -- UI sessions -----------------------------------------------------------------------


def start_session(session: Session, user: User, now: datetime, lifetime: timedelta) -> str:
    """Open a browser session; returns the random id the cookie carries."""
    raw = secrets.token_urlsafe(32)
    session.add(
        UserSession(
            user_id=user.id,  # type: ignore[arg-type]
            token_hash=digest(raw),
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    session.flush()
    return raw


def user_for_session(session: Session, raw: str, now: datetime) -> User | None:
    row = session.exec(select(UserSession).where(UserSession.token_hash == digest(raw))).first()
    if row is None or row.expires_at <= now:
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.active else None


def end_session(session: Session, raw: str) -> None:
    row = session.exec(select(UserSession).where(UserSession.token_hash == digest(raw))).first()
    if row is not None:
        session.delete(row)
        session.flush()


def _end_sessions(session: Session, user_id: int) -> None:
    for row in session.exec(select(UserSession).where(UserSession.user_id == user_id)).all():
        session.delete(row)


# -- workspace settings -----------------------------------------------------------------

SECRET_KEY = "secret_key"
REQUIRE_APPROVAL = "require_approval"
SETUP_TOKEN = "setup_token_hash"


def get_setting(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(WorkspaceSetting, key)
    return default if row is None else row.value


def set_setting(session: Session, key: str, value: Any, now: datetime) -> None:
    row = session.get(WorkspaceSetting, key)
    if row is None:
        row = WorkspaceSetting(key=key, value=value, updated_at=now)
    else:
        row.value, row.updated_at = value, now
    session.add(row)
    session.flush()


def secret_key(session: Session, configured: str | None, now: datetime) -> str:
    """The configured secret key, else one generated on first use and stored."""
    if configured:
        return configured
    stored = get_setting(session, SECRET_KEY)
    if not stored:
        # Insert-or-keep, then read: processes starting together on a new
        # database all end up with the one key the first of them stored.
        table = WorkspaceSetting.__table__  # type: ignore[attr-defined]
        session.execute(
            insert_of(session, table)
            .values(key=SECRET_KEY, value=secrets.token_urlsafe(48), updated_at=now)
            .on_conflict_do_nothing()
        )
        stored = session.execute(
            select(table.c.value).where(table.c.key == SECRET_KEY)
        ).scalar_one()
    return str(stored)


def requires_approval(session: Session, default: bool) -> bool:
    return bool(get_setting(session, REQUIRE_APPROVAL, default))


def issue_setup_token(session: Session, now: datetime) -> str | None:
    """On a workspace with no users, a one-time token for ``/setup`` (printed by
    ``serve``). None when users exist."""
    if has_users(session):
        return None
    raw = secrets.token_urlsafe(24)
    set_setting(session, SETUP_TOKEN, digest(raw), now)
    return raw


def complete_setup(session: Session, raw: str, username: str, password: str, now: datetime) -> User:
    """Create the first admin with the one-time setup token; the token is spent."""
    stored = get_setting(session, SETUP_TOKEN)
    if has_users(session) or not stored or not hmac.compare_digest(stored, digest(raw)):
        raise UserError("this setup link is not valid (already used, or users exist)")
    user = create_user(session, username, password, ["admin"], now)
    set_setting(session, SETUP_TOKEN, None, now)
    return user
