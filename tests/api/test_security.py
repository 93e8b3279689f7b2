"""Security headers on every UI answer, login throttling (per username and per
address, with a clear message, on the injected clock), literal search text,
and /api/workers for admins only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from auth_helpers import PASSWORD, make_auth_headers, make_user
from factories import add_contact
from fastapi.testclient import TestClient

from api.app import create_app

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings):
    clock.set(T0)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        yield c


def _login(client, username: str, password: str):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def test_every_ui_answer_carries_the_security_headers(client, engine, clock):
    headers = make_auth_headers(engine, clock.now())
    for path in ("/login", "/", "/templates", "/log", "/docs", "/static/app.css", "/nowhere"):
        answer = client.get(path, headers=headers)
        csp = answer.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp.replace("style-src-attr 'unsafe-inline'", ""), path
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "same-origin", path


def test_pages_have_no_inline_script(client, engine, clock):
    headers = make_auth_headers(engine, clock.now())
    for path in ("/login", "/", "/templates", "/templates/new", "/log", "/docs"):
        html = client.get(path, headers=headers).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert not re.search(r"\son[a-z]+=", html), path


def test_five_wrong_passwords_lock_the_username_for_fifteen_minutes(client, engine, clock):
    make_user(engine, T0, "wang", ["operator"])
    for _ in range(5):
        assert _login(client, "wang", "wrong-password").status_code == 401
    locked = _login(client, "wang", PASSWORD)  # the right one no longer helps
    assert locked.status_code == 429
    assert "登录失败次数过多，请 15 分钟后再试" in locked.text
    assert int(locked.headers["retry-after"]) <= 15 * 60 + 1
    clock.set(T0 + timedelta(minutes=14, seconds=59))
    assert _login(client, "wang", PASSWORD).status_code == 429
    clock.set(T0 + timedelta(minutes=15))
    assert _login(client, "wang", PASSWORD).status_code == 303


def test_one_address_guessing_many_usernames_is_locked_too(client, engine, clock):
    make_user(engine, T0, "li", ["operator"])
    for i in range(5):
        assert _login(client, f"user{i}", "wrong-password").status_code == 401
    # a username never tried, from the same address: refused
    assert _login(client, "li", PASSWORD).status_code == 429


def test_a_right_password_resets_the_username_count(client, engine, clock):
    make_user(engine, T0, "zhao", ["operator"])
    for _ in range(4):
        _login(client, "zhao", "wrong-password")
    assert _login(client, "zhao", PASSWORD).status_code == 303


def test_search_text_is_literal_not_a_wildcard(client, engine, clock):
    headers = make_auth_headers(engine, clock.now())
    add_contact(engine, "wm_1", "张三", T0)
    add_contact(engine, "wm%2", "100% 李四", T0)
    add_contact(engine, "wm\\3", "王五", T0)
    found = {
        q: [
            r["external_id"]
            for r in client.get("/api/contacts", params={"q": q}, headers=headers).json()["rows"]
        ]
        for q in ("_", "%", "\\", "wm_", "100%")
    }
    assert found == {
        "_": ["wm_1"],
        "%": ["wm%2"],
        "\\": ["wm\\3"],
        "wm_": ["wm_1"],
        "100%": ["wm%2"],
    }


def test_the_workers_list_is_for_admins_only(client, engine, clock):
    for role, status in (("analyst", 403), ("operator", 403), ("approver", 403), ("admin", 200)):
        headers = make_auth_headers(engine, clock.now(), username=f"u-{role}", roles=[role])
        assert client.get("/api/workers", headers=headers).status_code == status, role
    assert client.get("/healthz").status_code == 200  # still open
