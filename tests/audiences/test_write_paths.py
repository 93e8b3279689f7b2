"""One audience write path: however a contact or group gets its tag — events
API, the inbox job, the contact/group forms, the CSV upload, the CLI — the same
SOP reaction follows (audiences.changes + scheduler.flows.changes)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from audience_helpers import enrollments, register_account
from factories import store_menu_spec
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli
from audiences import inbox
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")
TAG = "spring-class-2027"
runner = CliRunner()

CLASS = {
    "name": "春季班课程提醒",
    "target": "contact",
    "timezone": "Asia/Shanghai",
    "anchor": "tag",
    "anchor_tag": TAG,
    "segment": {"tags": TAG},
    "touchpoints": [
        {"name": "reminder", "timing": "day 1 20:00", "content": "{{ contact.name }}，今晚上课"},
        {"name": "preview", "timing": "day 2 19:30", "content": "预习资料"},
    ],
}


@pytest.fixture
def client(engine, clock, settings, auth_headers, monkeypatch):
    clock.set(datetime(2027, 3, 1, 9, 0, tzinfo=SH))
    monkeypatch.setenv("SOPBOT_DATABASE_URL", settings.database_url)  # the CLI cases
    register_account(engine, "staff_1")
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        for spec in (CLASS, store_menu_spec(segment={"tag": "store"})):
            created = c.post("/api/templates", json=spec).json()
            assert c.post(f"/api/templates/{created['id']}/publish").status_code == 200
        clock.advance(timedelta(minutes=5))
        yield c


def events_api(client, tmp_path):
    response = client.post(
        "/api/events",
        json=[
            {"kind": "friend_added", "account": "staff_1", "external_id": "wm_x", "name": "小明"},
            {"kind": "tag_added", "account": "staff_1", "external_id": "wm_x", "tags": [TAG]},
        ],
    )
    assert response.status_code == 200, response.text


def inbox_job(client, tmp_path):
    """A stored event applied by the inbox job (the path WeCom callbacks take)."""
    engine = client.app.state.engine
    now = client.app.state.clock.now()
    with session_scope(engine) as session:
        for i, event in enumerate(
            [
                {
                    "kind": "contact_updated",
                    "account": "staff_1",
                    "external_id": "wm_x",
                    "create_missing": True,
                },  # fmt: skip
                {"kind": "tag_added", "account": "staff_1", "external_id": "wm_x", "tags": [TAG]},
            ]
        ):
            inbox.enqueue(
                session, dedupe_key=f"q{now.timestamp()}-{i}-{uuid.uuid4()}", source="queued", kind=event["kind"], payload=event, now=now
            )  # fmt: skip
    assert client.post("/api/events/inbox/apply").json()["applied"] == 2


def contact_form(client, tmp_path):
    body = {"external_id": "wm_x", "name": "小明", "account": "staff_1", "tags": [TAG]}
    assert client.post("/api/contacts", json=body).status_code == 201


def csv_upload(client, tmp_path):
    data = f"external_id,name,account,tags\nwm_x,小明,staff_1,{TAG}\n".encode()
    response = client.post("/api/contacts/import", files={"file": ("c.csv", data, "text/csv")})
    assert response.status_code == 200, response.text


def cli_contact_add(client, tmp_path):
    result = runner.invoke(
        cli, ["contact", "add", "wm_x", "--name", "小明", "--account", "staff_1", "--tag", TAG]
    )
    assert result.exit_code == 0, result.output


def cli_import(client, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(f"external_id,name,account,tags\nwm_x,小明,staff_1,{TAG}\n", encoding="utf-8")
    result = runner.invoke(cli, ["import", "contacts", str(path)])
    assert result.exit_code == 0, result.output


def group_form(client, tmp_path):
    body = {"external_id": "wr_x", "name": "徐汇店福利群", "tags": ["store"]}
    assert client.post("/api/groups", json=body).status_code == 201


def group_event(client, tmp_path):
    event = {"kind": "group_created", "external_id": "wr_x", "name": "徐汇店", "tags": ["store"]}
    assert client.post("/api/events", json=event).status_code == 200


@pytest.mark.parametrize(
    "write",
    [events_api, inbox_job, contact_form, csv_upload, cli_contact_add, cli_import],
)
def test_a_contact_tagged_through_any_entry_point_enrolls_once(client, engine, tmp_path, write):
    write(client, tmp_path)
    (enrollment,) = enrollments(engine)
    assert (enrollment.template_id, enrollment.target_kind) == (1, "contact")
    write(client, tmp_path)  # the same change again: still one enrollment
    assert len(enrollments(engine)) == 1


@pytest.mark.parametrize("write", [group_form, group_event])
def test_a_group_tagged_store_through_any_entry_point_enrolls_once(client, engine, tmp_path, write):
    write(client, tmp_path)
    (enrollment,) = enrollments(engine)
    assert (enrollment.template_id, enrollment.target_kind) == (2, "group")


def test_a_form_value_an_event_would_refuse_is_a_422_and_writes_nothing(client, engine):
    bad = client.post(
        "/api/contacts", json={"external_id": "wm_x", "timezone": "Mars/Base", "tags": [TAG]}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"]["errors"][0]["loc"] == "timezone"
    assert "unknown time zone" in bad.json()["detail"]["message"]
    assert client.get("/api/contacts").json()["total"] == 0 and enrollments(engine) == []
