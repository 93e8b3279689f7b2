"""Users and API tokens for tests that call the API (every route checks the role)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Engine

from api.users import service as users_service
from api.users.models import User
from sopbot.db import session_scope

PASSWORD = "test-password"


@lru_cache(maxsize=1)
def _password_hash() -> str:
    # scrypt is slow on purpose; tests hash the one password once.
    return users_service.hash_password(PASSWORD)


def make_user(
    engine: Engine, now: datetime, username: str = "test-admin", roles: Iterable[str] = ("admin",)
) -> int:
    with session_scope(engine) as session:
        user = User(
            username=username,
            display_name=username,
            roles=users_service.clean_roles(roles),
            password_hash=_password_hash(),
            created_at=now,
        )
        session.add(user)
        session.flush()
        return user.id  # type: ignore[return-value]


def token_headers(engine: Engine, now: datetime, user_id: int) -> dict[str, str]:
    with session_scope(engine) as session:
        new = users_service.create_token(session, user_id, "tests", now)
    return {"Authorization": f"Bearer {new.secret}"}


def make_auth_headers(
    engine: Engine, now: datetime, username: str = "test-admin", roles: Iterable[str] = ("admin",)
) -> dict[str, str]:
    """``Authorization: Bearer …`` of a new user with ``roles`` (default: admin)."""
    return token_headers(engine, now, make_user(engine, now, username, roles))


def ui_login(
    client: Any, engine: Engine, clock: Any, username: str = "wang", roles: Any = ("operator",)
) -> str:
    """Create a user with ``roles`` and sign in through the login form; returns
    the page's CSRF token."""
    make_user(engine, clock.now(), username, list(roles))
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = client.post(
        "/login", data={"username": username, "password": "test-password", "csrf_token": token}
    )
    return re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)  # type: ignore[union-attr]
