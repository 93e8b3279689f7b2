"""One live template whose timing cannot be computed fails alone: the others
still enroll on the same event, and the event says which template failed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import new_friend_spec
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences.models import Account
from scheduler.outbox.models import Enrollment
from sop_templates.models import TemplateVersion, Touchpoint
from sopbot.db import session_scope


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    clock.set(datetime(2027, 3, 1, 1, 0, tzinfo=UTC))
    with session_scope(engine) as session:
        session.add(Account(external_id="staff_1", name="客服"))
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def _poison(engine, template_id: int) -> None:
    """Give a live version an offset the calendar cannot hold (as a version
    published before offsets were bounded would have)."""
    far = {"kind": "offset", "offset": "3000000d"}
    with session_scope(engine) as session:
        for tp in session.execute(
            select(Touchpoint).where(Touchpoint.template_id == template_id)
        ).scalars():
            tp.timing = far
        for version in session.execute(
            select(TemplateVersion).where(TemplateVersion.template_id == template_id)
        ).scalars():
            spec = dict(version.spec)
            spec["touchpoints"] = [{**t, "timing": far} for t in spec["touchpoints"]]
            version.spec = spec


def test_a_template_that_cannot_be_timed_fails_alone(client, engine, clock):
    segment = {"kind": "new_friends"}
    ids = []
    for name in ("健康的 SOP", "坏掉的 SOP", "另一个健康的 SOP"):
        created = client.post("/api/templates", json=new_friend_spec(name=name, segment=segment))
        assert client.post(f"/api/templates/{created.json()['id']}/publish").status_code == 200
        ids.append(created.json()["id"])
    _poison(engine, ids[1])
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))

    for external in ("wm_a", "wm_b"):
        response = client.post(
            "/api/events",
            json={"kind": "friend_added", "account": "staff_1", "external_id": external},
        )
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["applied"] == 1 and report["enrolled"] == 2
        (failure,) = report["failed_templates"]
        assert failure["template_id"] == ids[1] and failure["template"] == "坏掉的 SOP"
        assert failure["error"]

    with session_scope(engine) as session:
        enrolled = session.execute(select(Enrollment.template_id, Enrollment.target_id)).all()
    assert sorted(enrolled) == [(ids[0], 1), (ids[0], 2), (ids[2], 1), (ids[2], 2)]
