"""The minimal way in over HTTP: create, publish, add a contact, enroll, watch it send."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from factories import new_friend_spec
from fastapi.testclient import TestClient

from api.app import create_app


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_template_contact_enroll_and_deliver(client, clock):
    clock.set(datetime(2027, 3, 1, 13, 30, tzinfo=UTC))
    created = client.post("/api/templates", json=new_friend_spec())
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["status"] == "draft"

    published = client.post(f"/api/templates/{template['id']}/publish")
    assert published.json()["version"] == 1

    contact = client.post(
        "/api/contacts",
        json={"external_id": "wm_api", "name": "王小明", "joined_at": "2027-03-01T21:30:00+08:00"},
    )
    assert contact.status_code == 201, contact.text

    enrolled = client.post(
        f"/api/templates/{template['id']}/enrollments", json={"targets": ["wm_api"]}
    )
    assert enrolled.json() == {"enrolled": 1, "already": 0, "deliveries": 3, "skipped": 0}
    again = client.post(
        f"/api/templates/{template['id']}/enrollments", json={"targets": ["wm_api"]}
    )
    assert again.json()["already"] == 1

    asyncio.run(client.app.state.runtime.dispatch_tick())
    log = client.get("/api/deliveries", params={"template_id": template["id"]}).json()
    assert sorted(d["status"] for d in log) == ["scheduled", "scheduled", "sent"]
    inbox = client.get("/api/mock/messages").json()
    assert len(inbox) == 1 and "王小明" in inbox[0]["parts"][0]["text"]

    detail = client.get(f"/api/templates/{template['id']}").json()
    assert detail["counts"] == {"scheduled": 2, "sent": 1}


def test_validation_errors_name_the_field(client):
    spec = new_friend_spec()
    spec["touchpoints"][1]["timing"] = "cron 0 25 * * *"
    response = client.post("/api/templates", json=spec)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors[0]["loc"] == "touchpoints[1].timing.cron"
    assert "25" in errors[0]["msg"]


def test_duplicate_name_and_unknown_things(client):
    assert client.post("/api/templates", json=new_friend_spec()).status_code == 201
    duplicate = client.post("/api/templates", json=new_friend_spec())
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    assert client.get("/api/templates/999").status_code == 404
    assert client.get("/api/contacts/nobody").status_code == 404
    bad_status = client.get("/api/deliveries", params={"status": "lost"})
    assert bad_status.status_code == 422 and "lost" in bad_status.text


def test_enrolling_into_a_draft_is_refused(client):
    template = client.post("/api/templates", json=new_friend_spec()).json()
    client.post("/api/contacts", json={"external_id": "wm_x", "name": "x"})
    response = client.post(
        f"/api/templates/{template['id']}/enrollments", json={"targets": ["wm_x"]}
    )
    assert response.status_code == 409
    assert "only a published template enrolls" in response.json()["detail"]


def test_naive_joined_at_is_refused(client):
    response = client.post(
        "/api/contacts", json={"external_id": "wm_n", "joined_at": "2027-03-01T21:30:00"}
    )
    assert response.status_code == 422
    assert "UTC offset" in response.text


def test_status_page_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>运行状态 · sopbot</title>" in page.text
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["backlog"] == 0
