"""Validation renders every touchpoint against the sample context and against a
few real contacts of the segment: content that only runs away for a real
contact is refused by validate, by draft save and by the editor's 检查, not
first at send time."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from auth_helpers import make_user
from factories import add_contact, new_friend_spec
from fastapi.testclient import TestClient

from api import editor_forms
from api.app import create_app

ONLY_FOR_REAL = "range(3000 if contact.name != '张三' else 0)"
NESTED = (
    f"{{% for i in {ONLY_FOR_REAL} %}}{{% for j in {ONLY_FOR_REAL} %}}{{% endfor %}}{{% endfor %}}"
)
JOIN = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def _spec() -> dict:
    content = [f"{{{{ contact.name }}}}，欢迎！{NESTED}"]
    touchpoints = [{"name": "welcome", "timing": "+0m", "content": content}]
    return new_friend_spec(segment={"kind": "new_friends"}, touchpoints=touchpoints)


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_the_sample_alone_passes(client):
    assert client.post("/api/templates/validate", json=_spec()).status_code == 200


def test_validate_refuses_within_a_second_naming_the_budget_and_the_contact(client, engine):
    add_contact(engine, "wm_li", "李四", JOIN)
    started = time.perf_counter()
    response = client.post("/api/templates/validate", json=_spec())
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 422
    problem = response.json()["errors"][0]
    assert problem["loc"] == "touchpoints[0].content[0].text"
    assert "200 ms" in problem["msg"] and "李四" in problem["msg"]


def test_saving_the_draft_runs_the_same_checks(client, engine):
    add_contact(engine, "wm_li", "李四", JOIN)
    created = client.post("/api/templates", json=_spec())
    assert created.status_code == 422 and "李四" in created.text
    assert client.get("/api/templates").json() == []

    harmless = new_friend_spec(segment={"kind": "new_friends"})
    template_id = client.post("/api/templates", json=harmless).json()["id"]
    updated = client.put(f"/api/templates/{template_id}", json=_spec())
    assert updated.status_code == 422 and "李四" in updated.text
    draft = client.get(f"/api/templates/{template_id}").json()["draft"]
    assert NESTED not in str(draft)


def _posted(form: dict, csrf: str, action: str) -> dict[str, str]:
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


def test_the_editors_check_shows_the_problem_at_its_field(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    make_user(engine, clock.now(), "wang", ["operator"])
    add_contact(engine, "wm_li", "李四", JOIN)
    with TestClient(app) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        done = client.post(
            "/login", data={"username": "wang", "password": "test-password", "csrf_token": token}
        )
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)
        form = editor_forms.form_from_spec(_spec())
        for action in ("check", "save"):
            answer = client.post("/templates/new", data=_posted(form, csrf, action))
            assert answer.status_code == 422
            assert re.search(r'data-error-for="tp-0-part-0-text">[^<]*李四', answer.text)
        assert client.get("/api/templates").json() == []
