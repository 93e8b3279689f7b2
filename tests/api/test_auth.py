"""Users, roles, sessions, API tokens, CSRF, approval and the audit log."""

from __future__ import annotations

import re

import pytest
from auth_helpers import PASSWORD, make_auth_headers, make_user, token_headers
from factories import new_friend_spec
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from api.users import service as users_service
from api.users.models import ApiToken, AuditEntry
from sopbot.db import reader, session_scope


@pytest.fixture
def app(engine, clock, settings):
    return create_app(settings, engine=engine, clock=clock, run_scheduler=False)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 200, response.text
    return re.search(r'name="csrf-token" content="([^"]+)"', response.text).group(1)


def test_without_credentials_the_api_says_401_and_pages_send_to_login(client):
    response = client.get("/api/templates")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    page = client.get("/templates", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/templates"
    # every other package's router is behind the gate too
    for path in ("/api/deliveries", "/api/channels", "/api/stats/templates", "/log", "/report"):
        assert client.get(path, follow_redirects=False).status_code in (401, 303), path
    # health checks and the signed WeCom callback stay open
    assert client.get("/healthz").status_code == 200


def test_a_bad_or_revoked_token_is_refused(client, engine, clock):
    assert client.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    headers = make_auth_headers(engine, clock.now(), "ops", ["operator"])
    me = client.get("/api/me", headers=headers).json()
    assert me["username"] == "ops" and "author" in me["permissions"] and me["via"] == "token"
    token_id = client.get("/api/tokens", headers=headers).json()[0]["id"]
    assert client.delete(f"/api/tokens/{token_id}", headers=headers).status_code == 200
    assert client.get("/api/me", headers=headers).status_code == 401


def test_tokens_are_shown_once_and_stored_hashed(client, engine, auth_headers):
    created = client.post("/api/tokens", json={"name": "crm-sync"}, headers=auth_headers)
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("sopbot_")
    listed = client.get("/api/tokens", headers=auth_headers).json()
    assert all("token" not in t for t in listed)
    with Session(engine) as session:
        stored = session.exec(select(ApiToken).where(ApiToken.name == "crm-sync")).one()
    assert secret not in stored.token_hash and stored.token_hash == users_service.digest(secret)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_an_analyst_reads_but_cannot_create_or_publish(client, engine, clock, auth_headers):
    template = client.post("/api/templates", json=new_friend_spec(), headers=auth_headers).json()
    analyst = make_auth_headers(engine, clock.now(), "ana", ["analyst"])
    assert client.get("/api/templates", headers=analyst).status_code == 200
    assert client.get("/api/deliveries", headers=analyst).status_code == 200
    created = client.post("/api/templates", json=new_friend_spec(name="x"), headers=analyst)
    assert created.status_code == 403 and "operator or admin" in created.json()["detail"]
    published = client.post(f"/api/templates/{template['id']}/publish", headers=analyst)
    assert published.status_code == 403
    assert client.post("/api/events", json={}, headers=analyst).status_code == 403
    assert client.get("/api/users", headers=analyst).status_code == 403
    # the UI says so too, in a page
    assert client.get("/templates/new", headers=analyst).status_code == 403


def test_only_admins_configure_channels_and_users(client, engine, clock):
    operator = make_auth_headers(engine, clock.now(), "ops", ["operator"])
    body = {"name": "hook", "adapter": "mock", "config": {}}
    assert client.post("/api/channels", json=body, headers=operator).status_code == 403
    assert client.get("/api/channels", headers=operator).status_code == 200
    assert (
        client.post(
            "/api/users",
            json={"username": "x1", "password": "12345678", "roles": ["admin"]},
            headers=operator,
        ).status_code
        == 403
    )


def test_approval_the_author_cannot_approve_and_publishing_waits(
    client, engine, clock, auth_headers
):
    client.put("/api/settings/workspace", json={"require_approval": True}, headers=auth_headers)
    # an operator who may also approve (of others' work)
    author = make_auth_headers(engine, clock.now(), "wang", ["operator", "approver"])
    template = client.post("/api/templates", json=new_friend_spec(), headers=author).json()
    tid = template["id"]

    early = client.post(f"/api/templates/{tid}/publish", headers=author)
    assert early.status_code == 409 and "needs approval" in early.json()["detail"]
    submitted = client.post(f"/api/templates/{tid}/submit", headers=author).json()
    assert submitted["state"] == "pending" and submitted["status"] == "pending_approval"

    own = client.post(f"/api/templates/{tid}/approve", headers=author)
    assert own.status_code == 409 and "another approver" in own.json()["detail"]
    plain_operator = make_auth_headers(engine, clock.now(), "li", ["operator"])
    assert client.post(f"/api/templates/{tid}/approve", headers=plain_operator).status_code == 403

    approver = make_auth_headers(engine, clock.now(), "zhao", ["approver"])
    approved = client.post(
        f"/api/templates/{tid}/approve", json={"note": "ok"}, headers=approver
    ).json()
    assert approved["state"] == "approved" and approved["decided_by"] == "zhao"

    # an edit after approval voids it
    client.put(f"/api/templates/{tid}", json=new_friend_spec(description="v2"), headers=author)
    assert client.post(f"/api/templates/{tid}/publish", headers=author).status_code == 409
    client.post(f"/api/templates/{tid}/submit", headers=author)
    # the approver edited nothing, approves again; now it publishes
    client.post(f"/api/templates/{tid}/approve", headers=approver)
    published = client.post(f"/api/templates/{tid}/publish", headers=author)
    assert published.status_code == 200, published.text
    assert published.json()["version"] == 1


def test_an_approver_who_edited_the_draft_cannot_approve_it(client, engine, clock, auth_headers):
    client.put("/api/settings/workspace", json={"require_approval": True}, headers=auth_headers)
    author = make_auth_headers(engine, clock.now(), "wang", ["operator"])
    editor = make_auth_headers(engine, clock.now(), "zhao", ["operator", "approver"])
    tid = client.post("/api/templates", json=new_friend_spec(), headers=author).json()["id"]
    client.put(f"/api/templates/{tid}", json=new_friend_spec(description="fix"), headers=editor)
    client.post(f"/api/templates/{tid}/submit", headers=author)
    refused = client.post(f"/api/templates/{tid}/approve", headers=editor)
    assert refused.status_code == 409


def test_a_browser_change_without_the_csrf_token_is_refused(client, engine, clock):
    make_user(engine, clock.now(), "wang", ["operator"])
    csrf = login(client, "wang")
    spec = new_friend_spec()
    # JSON API with the session cookie: the header is required
    refused = client.post("/api/templates", json=spec)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    wrong = client.post("/api/templates", json=spec, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    assert (
        client.post("/api/templates", json=spec, headers={"X-CSRF-Token": csrf}).status_code == 201
    )
    # a UI form without the field
    form = client.post("/templates/1/pause", data={})
    assert form.status_code == 403 and "CSRF" in form.text
    # logging in needs the login form's token too
    client.cookies.clear()
    assert (
        client.post(
            "/login", data={"username": "wang", "password": PASSWORD}, follow_redirects=False
        ).status_code
        == 403
    )


def test_session_cookie_is_signed_httponly_and_lax(client, engine, clock):
    make_user(engine, clock.now(), "wang", ["operator"])
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login",
        data={"username": "wang", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    value = client.cookies.get("sopbot_session")
    client.cookies.set("sopbot_session", value[:-3] + "abc")
    assert client.get("/api/me").status_code == 401


def test_wrong_password_and_disabled_users_cannot_log_in(client, engine, clock, auth_headers):
    user_id = make_user(engine, clock.now(), "wang", ["operator"])
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    wrong = client.post(
        "/login", data={"username": "wang", "password": "nope", "csrf_token": token}
    )
    assert wrong.status_code == 401
    login(client, "wang")
    assert client.get("/api/me").status_code == 200
    client.patch(f"/api/users/{user_id}", json={"active": False}, headers=auth_headers)
    assert client.get("/api/me").status_code == 401  # the session ended with the account


def test_script_in_names_and_content_is_shown_escaped(client, engine, clock, auth_headers):
    evil = "<script>alert(1)</script>"
    spec = new_friend_spec(name=f"SOP {evil}")
    spec["touchpoints"][0]["content"] = [f"hi {evil} {{{{ contact.name }}}}"]
    template = client.post("/api/templates", json=spec, headers=auth_headers).json()
    client.post(
        "/api/contacts",
        json={"external_id": "wm_x", "name": f"Mallory {evil}"},
        headers=auth_headers,
    )
    pages = [
        client.get("/templates", headers=auth_headers).text,
        client.get(f"/templates/{template['id']}?target=wm_x", headers=auth_headers).text,
        client.get("/contacts", headers=auth_headers).text,
        client.get("/", headers=auth_headers).text,
    ]
    for html in pages:
        assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "Mallory &lt;script&gt;" in pages[1]  # rendered preview for the real contact


def test_changes_are_in_the_audit_log(client, auth_headers):
    template = client.post("/api/templates", json=new_friend_spec(), headers=auth_headers).json()
    client.post(
        f"/api/templates/{template['id']}/publish", json={"migrate": "keep"}, headers=auth_headers
    )
    client.post(
        "/api/channels",
        json={"name": "hook", "adapter": "mock", "config": {}},
        headers=auth_headers,
    )
    log = client.get("/api/audit", headers=auth_headers).json()
    actions = [(e["action"], e["username"]) for e in log]
    assert ("template.create", "test-admin") in actions
    assert ("template.publish", "test-admin") in actions
    # another package's route, recorded by the audit middleware
    assert any(
        a == "api.post" and e["summary"] == "POST /api/channels"
        for (a, _), e in zip(actions, log, strict=True)
    )
    mine = client.get(f"/api/templates/{template['id']}/audit", headers=auth_headers).json()
    assert [e["action"] for e in mine] == ["template.publish", "template.create"]


def test_first_admin_from_the_one_time_setup_link(client, engine, clock):
    with session_scope(engine) as session:
        token = users_service.issue_setup_token(session, clock.now())
    page = client.get(f"/setup?token={token}")
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/setup",
        data={
            "token": token,
            "username": "boss",
            "password": "long-password",
            "csrf_token": login_csrf,
        },
    )
    assert done.status_code == 200 and "boss" in done.text
    assert client.get("/api/me").json()["roles"] == ["admin"]
    again = client.post(
        "/setup",
        data={
            "token": token,
            "username": "eve",
            "password": "long-password",
            "csrf_token": login_csrf,
        },
    )
    assert again.status_code == 422
    with Session(engine) as session:
        assert [u.username for u in users_service.list_users(session)] == ["boss"]


def test_the_last_admin_cannot_be_removed(client, engine, clock):
    with session_scope(engine) as session:
        admin = users_service.create_user(session, "root", "long-password", ["admin"], clock.now())
        admin_id = admin.id
    headers = token_headers(engine, clock.now(), admin_id)
    response = client.patch(f"/api/users/{admin_id}", json={"roles": ["operator"]}, headers=headers)
    assert response.status_code == 409 and "last active admin" in response.json()["detail"]


def test_openapi_documents_both_security_schemes(client):
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIToken"]["scheme"] == "bearer"
    assert schemes["SessionCookie"]["name"] == "sopbot_session"


def test_ui_is_chinese_by_default_with_an_english_switch(client, engine, clock):
    make_user(engine, clock.now(), "wang", ["operator"])
    login(client, "wang")
    assert "SOP 模板" in client.get("/templates").text
    assert "时间按 Asia/Shanghai 显示" in client.get("/templates").text
    switched = client.get("/lang?to=en&next=/templates")
    assert "SOP templates" in switched.text and "Times are shown in Asia/Shanghai" in switched.text
    assert client.get("/lang?to=en&next=https://evil.example/").url.path == "/"


def test_audit_rows_record_who(engine, clock, client, auth_headers):
    client.post("/api/templates", json=new_friend_spec(), headers=auth_headers)
    with Session(engine) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "template.create")).one()
    assert entry.username == "test-admin" and entry.at == clock.now()


def test_a_token_s_last_use_never_waits_for_a_busy_writer(client, engine, clock):
    """Recording "last used" is bookkeeping: while another writer holds SQLite's
    write lock the request is answered at once and a later request records it."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    headers = make_auth_headers(engine, clock.now(), "ops", ["operator"])

    def last_used():  # type: ignore[no-untyped-def]
        with Session(reader(engine)) as session:
            return session.exec(select(ApiToken.last_used_at)).one()

    assert last_used() is None
    writer = engine.raw_connection()
    try:
        writer.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
        assert client.get("/api/me", headers=headers).status_code == 200
        assert last_used() is None  # skipped, not waited for
        writer.rollback()
    finally:
        writer.close()
    assert client.get("/api/me", headers=headers).status_code == 200
    assert last_used() is not None
