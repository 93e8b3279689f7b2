"""The operator UI over HTTP (no browser): every page renders for its roles, the
editor saves, shows problems at their field, publishes keep/move; and the
translations are complete and compiled."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from auth_helpers import make_auth_headers, make_user
from factories import add_contact
from fastapi.testclient import TestClient

from api import editor_forms
from api.app import create_app
from sop_templates import library

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)  # Tue 21:30 Shanghai
LOCALE = Path(__file__).resolve().parents[2] / "api" / "locale"


@pytest.fixture
def client(engine, clock, settings):
    clock.set(JOIN)
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        yield c


@pytest.fixture
def operator(client, engine, clock) -> str:
    """Logged in as an operator; returns the CSRF token."""
    make_user(engine, clock.now(), "wang", ["operator"])
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/login", data={"username": "wang", "password": "test-password", "csrf_token": token}
    )
    return re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)


def posted(form: dict, csrf: str, action: str = "save") -> dict[str, str]:
    """The editor's form state as the browser posts it."""
    data = {k: v for k, v in form.items() if not isinstance(v, list | bool)}
    data.update({k: "on" for k, v in form.items() if v is True})
    data["tp-count"] = str(len(form["touchpoints"]))
    for i, tp in enumerate(form["touchpoints"]):
        data.update({f"tp-{i}-{k}": v for k, v in tp.items() if k != "parts"})
        data[f"tp-{i}-part-count"] = str(len(tp["parts"]))
        for j, part in enumerate(tp["parts"]):
            data.update({f"tp-{i}-part-{j}-{k}": v for k, v in part.items()})
    return {**data, "csrf_token": csrf, "action": action}


def test_every_page_renders_for_an_admin(client, engine, clock):
    headers = make_auth_headers(engine, clock.now())
    add_contact(engine, "wm_1", "张三", JOIN, tags=["vip"])
    for path in (
        "/",
        "/templates",
        "/templates/new",
        "/templates/new?start=new_friend",
        "/templates/new?start=blank-group",
        "/contacts",
        "/contacts/1",
        "/groups",
        "/segments",
        "/segments?kind=tagged&tags=vip",
        "/channels",
        "/channels/mock",
        "/users",
        "/account",
        "/audit",
        "/settings",
        "/log",
        "/report",
        "/calendar",
        "/calendar?view=month",
        "/materials",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text[:500])
    assert "1</strong>" in client.get("/segments?kind=tagged&tags=vip", headers=headers).text


def test_an_analyst_sees_pages_without_the_buttons_that_change_things(client, engine, clock):
    headers = make_auth_headers(engine, clock.now(), "ana", ["analyst"])
    page = client.get("/templates", headers=headers)
    assert page.status_code == 200 and 'href="/templates/new"' not in page.text
    assert client.get("/users", headers=headers).status_code == 403
    assert 'href="/users"' not in client.get("/", headers=headers).text


def test_editor_shows_a_bad_cron_at_its_field_then_saves(client, operator):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    form["touchpoints"][1].update(timing_kind="cron", cron="0 25 * * *")
    bad = client.post("/templates/new", data=posted(form, operator))
    assert bad.status_code == 422
    assert re.search(r'data-error-for="tp-1-cron">[^<]*25', bad.text)
    assert 'value="0 25 * * *"' in bad.text  # what was typed is kept

    form["touchpoints"][1].update(timing_kind="offset", offset_n="3", offset_unit="h")
    saved = client.post("/templates/new", data=posted(form, operator), follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/templates/1?done=created"
    editor = client.get("/templates/1?sample_at=2027-03-02T21:30")
    assert "时间轴" in editor.text and "周二 03-02 21:30" in editor.text


def test_htmx_posts_get_the_form_back_and_a_redirect_on_save(client, operator):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    headers = {"HX-Request": "true"}
    added = client.post(
        "/templates/new", data=posted(form, operator, "add_touchpoint"), headers=headers
    )
    assert added.text.lstrip().startswith('<form id="editor"')
    assert added.text.count('class="touchpoint') == 4
    saved = client.post("/templates/new", data=posted(form, operator), headers=headers)
    assert saved.headers["hx-redirect"] == "/templates/1?done=created"


def test_publish_keep_and_move_from_the_ui(client, operator, engine):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    client.post("/templates/new", data=posted(form, operator))
    first = client.post("/templates/1/publish", data={"csrf_token": operator})
    assert "已发布" in first.text
    add_contact(engine, "wm_1", "张三", JOIN)
    client.post("/contacts/1/enroll", data={"csrf_token": operator, "template_id": "1"})
    form["touchpoints"][1].update(offset_n="4", offset_unit="h")
    client.post("/templates/1", data=posted(form, operator))
    page = client.get("/templates/1")
    assert 'name="migrate" value="move"' in page.text and "未发布的修改" in page.text
    # every form on the page carries the session's CSRF token
    tokens = set(re.findall(r'name="csrf_token" value="([^"]*)"', page.text))
    assert tokens == {operator}
    moved = client.post("/templates/1/publish", data={"csrf_token": operator, "migrate": "move"})
    assert moved.status_code == 200
    audit = client.get("/audit").text
    assert "版本 2（已加入的迁移到新版本）" in audit


def test_ui_steps_leave_the_audit_entries_the_api_leaves(client, operator, engine, clock):
    """A step taken in the UI is recorded as the JSON API records it: same
    action, summary and detail (one function carries out both)."""
    form = editor_forms.form_from_spec(library.load("new_friend"))
    client.post("/templates/new", data=posted(form, operator))
    for step in ("publish", "pause", "resume"):
        client.post(f"/templates/1/{step}", data={"csrf_token": operator})
    api = TestClient(client.app, headers=make_auth_headers(engine, clock.now()))
    api.post("/api/templates", json={**library.load("new_friend"), "name": "API SOP"})
    for step in ("publish", "pause", "resume"):
        assert api.post(f"/api/templates/2/{step}").status_code == 200

    def entries(template_id: int) -> list[tuple[str, str, set[str]]]:
        rows = api.get(f"/api/audit?object_kind=template&object_id={template_id}").json()
        return [(e["action"], e["summary"], set(e["detail"])) for e in rows]

    ui, by_api = entries(1), entries(2)
    assert [e[0] for e in ui] == [
        "template.resume",
        "template.pause",
        "template.publish",
        "template.create",
    ]
    assert ui[:2] == [
        ("template.resume", "新好友 SOP", set()),
        ("template.pause", "新好友 SOP", set()),
    ]
    assert [(a, d) for a, _, d in ui] == [(a, d) for a, _, d in by_api]
    assert ui[2][1] == by_api[2][1] == "v1 (keep)"


def test_a_refused_lifecycle_step_explains_why(client, operator):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    client.post("/templates/new", data=posted(form, operator))
    response = client.post("/templates/1/pause", data={"csrf_token": operator})
    assert response.status_code == 409 and "当前为草稿，不能改为已暂停" in response.text


def test_ui_test_send_with_htmx(client, operator, engine):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    client.post("/templates/new", data=posted(form, operator))
    add_contact(engine, "wm_me", "我", JOIN, account="staff_wang")
    response = client.post(
        "/templates/1/test-send",
        data={"csrf_token": operator, "target": "wm_me", "touchpoint": "欢迎语"},
        headers={"HX-Request": "true"},
    )
    assert "测试消息已发送" in response.text and "wm_me" in response.text


def test_api_docs_and_icon_load_nothing_from_outside(client):
    """/docs (linked from every page) must work offline and where public CDNs are
    blocked: every script, style sheet and icon it names is served here."""
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger-init.js" in docs.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert (
        'data-openapi-url="/openapi.json"' in docs.text
        and client.get("/openapi.json").status_code == 200
    )
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-loaded page is off
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    login = client.get("/login").text
    assert '<link rel="icon" href="/static/favicon.svg"' in login
    assert "<title>登录 · sopbot</title>" in login


def test_the_compiled_catalog_is_current_and_complete():
    from babel.messages.extract import extract_from_dir
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    folder = LOCALE / "zh_CN" / "LC_MESSAGES"
    with (folder / "messages.po").open("rb") as handle:
        po = {m.id: m.string for m in read_po(handle) if m.id}
    with (folder / "messages.mo").open("rb") as handle:
        mo = {m.id: m.string for m in read_mo(handle) if m.id}
    assert mo == po, "run: pybabel compile -d api/locale"
    method_map = [("**.py", "python"), ("templates/ui/**.html", "jinja2")]
    options = {"templates/ui/**.html": {"extensions": "jinja2.ext.i18n"}}
    used = {
        message
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(LOCALE.parent), method_map, options_map=options, keywords={"_": None, "N_": None}
        )
    }
    untranslated = sorted(m for m in used if not po.get(m))
    assert not untranslated, f"add to api/locale/zh_CN/LC_MESSAGES/messages.po: {untranslated}"


def test_send_again_now_on_a_paused_channel_closes_its_breaker_at_once(client, engine, clock):
    """The channel page's "Send again now" button (an admin's form): on SQLite
    it once waited out the 30 s lock timeout and answered 500."""
    import time
    from datetime import timedelta

    from sqlmodel import Session

    from channels.breaker import BreakerConfig, CircuitBreakers
    from sopbot.db import reader

    now = clock.now()
    CircuitBreakers(engine, "t").trip("mock", now, now + timedelta(hours=1), "维护")
    client.headers.update(make_auth_headers(engine, now))
    page = client.get("/channels/mock")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    started = time.perf_counter()
    done = client.post(
        "/channels/mock/breaker/reset", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert time.perf_counter() - started < 5
    assert done.status_code == 303 and done.headers["location"] == "/channels/mock?done=reset"
    with Session(reader(engine)) as session:
        assert CircuitBreakers(engine, "t").view(session, "mock", BreakerConfig()).state == "closed"
