"""Every route's required role, as the README's table "Who may call what" says.

Each route of the app is called with an API token of each role (and with none)
and the roles that get past the checks (anything but 401/403) are compared with
the README. After changing a route's permission, regenerate the table with
``SOPBOT_WRITE_ROLE_TABLE=1 pytest tests/api/test_route_roles.py`` and review it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from auth_helpers import make_auth_headers
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from api.app import create_app

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- route roles: start -->", "<!-- route roles: end -->"
ROLES = ("analyst", "approver", "operator", "admin")
# What the README calls each set of roles that may call a route.
NAMES = {
    (): "open (with its form's CSRF token)",
    ("admin",): "admin",
    ("admin", "approver"): "approver, admin",
    ("admin", "operator"): "operator, admin",
    ("admin", "analyst", "approver", "operator"): "any role",
}
PARAMS = {"name": "mock", "kind": "contact"}


def _routes(app) -> list[tuple[str, str]]:
    found: set[tuple[str, str]] = set()

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # an included router
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, APIRoute | Route):
                path = prefix + route.path
                if not path.startswith(("/static", "/docs")):
                    found.update((m, path) for m in route.methods or () if m != "HEAD")

    walk(app.routes, "")
    return sorted(found, key=lambda r: (r[1], r[0]))


def _url(path: str) -> str:
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: PARAMS.get(m.group(1), "1"), path)


def _table(client: TestClient, engine, now) -> list[tuple[str, str, str]]:
    tokens = {
        role: make_auth_headers(engine, now, username=f"roles-{role}", roles=[role])
        for role in ROLES
    }
    rows = []
    for method, path in _routes(client.app):
        url = _url(path)
        kwargs = {} if method == "GET" else {"json": {}}
        anonymous = client.request(method, url, follow_redirects=False, **kwargs)
        to_login = anonymous.headers.get("location", "").startswith("/login?next=")
        if anonymous.status_code not in (401, 403, 303) or (
            anonymous.status_code == 303 and not to_login
        ):
            rows.append((method, path, "open"))
            continue
        allowed = []
        for role in ROLES:
            answer = client.request(
                method, url, headers=tokens[role], follow_redirects=False, **kwargs
            )
            if answer.status_code == 401:  # a probe ended this token: a new one
                tokens[role] = make_auth_headers(
                    engine, now, username=f"roles-{role}-{len(rows)}", roles=[role]
                )
                answer = client.request(
                    method, url, headers=tokens[role], follow_redirects=False, **kwargs
                )
            if answer.status_code not in (401, 403):
                allowed.append(role)
        rows.append((method, path, NAMES.get(tuple(sorted(allowed)), ", ".join(allowed))))
    return rows


def _markdown(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| method | route | who may call it |", "|---|---|---|"]
    lines += [f"| {m} | `{p}` | {who} |" for m, p, who in rows]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def table(_pg_database, tmp_path_factory) -> list[tuple[str, str, str]]:
    """The table, probed once for this module's tests (some thousand requests)
    on a database of its own: the answers depend on the routes, not on data."""
    from datetime import UTC, datetime

    from sopbot.clock import ManualClock
    from sopbot.db import create_all, make_engine, session_scope
    from sopbot.settings import Settings

    if _pg_database is not None:
        _pg_database.empty()
        url = _pg_database.url
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('route-roles') / 'sopbot-test.db'}"
    settings = Settings(database_url=url, worker_id="test-worker", _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(settings)
    if _pg_database is None:
        create_all(engine)
    with session_scope(engine) as session:
        from channels.registry import ensure_instance

        ensure_instance(session, "mock", "mock")
    clock = ManualClock(datetime(2027, 3, 1, 0, 0, tzinfo=UTC))
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            return _table(client, engine, clock.now())
    finally:
        engine.dispose()


def test_every_route_checks_the_role_the_readme_names(table):
    markdown = _markdown(table)
    text = README.read_text()
    assert START in text and END in text, "the README lost its route-roles table"
    before, rest = text.split(START, 1)
    documented, after = rest.split(END, 1)
    if os.environ.get("SOPBOT_WRITE_ROLE_TABLE"):
        README.write_text(f"{before}{START}\n{markdown}\n{END}{after}")
        return
    assert documented.strip() == markdown, (
        "a route's required role differs from the README's table; if intended, "
        "regenerate it with SOPBOT_WRITE_ROLE_TABLE=1"
    )


def test_the_table_matches_the_documented_rules(table):
    """What the README promises in prose: analysts only read; users, channels
    and workers are for admins; /healthz and /metrics are open."""
    who = {(m, p): w for m, p, w in table}
    assert who[("GET", "/healthz")] == who[("GET", "/metrics")] == "open"
    assert who[("GET", "/api/workers")] == "admin"
    for (method, path), allowed in who.items():
        if method != "GET" and allowed not in ("open",) and path != "/logout":
            assert allowed != "any role" or path in _ANY_ROLE_CHANGES, (method, path, allowed)
        if path.startswith(("/api/users", "/users", "/settings")) or (
            path.startswith(("/api/channels", "/channels")) and method != "GET"
        ):
            assert allowed == "admin", (method, path, allowed)
        if method == "GET" and allowed not in ("open", "admin"):
            assert allowed == "any role" or path.startswith("/templates/new"), (path, allowed)


# Changes any signed-in user may make: their own account, tokens and session,
# and the checks that change nothing (validate, preview).
_ANY_ROLE_CHANGES = {
    "/logout",
    "/lang",
    "/api/templates/validate",
    "/api/tokens",
    "/api/tokens/{token_id}",
    "/account",
    "/account/password",
    "/account/tokens",
    "/account/tokens/{token_id}/revoke",
    "/api/me",
    "/api/me/password",
}
