"""The send calendar: a published daily group SOP shows tomorrow's 11:00 send
for every group before the planner has fanned it out, counted once when it has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from auth_helpers import make_auth_headers
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.app import create_app
from scheduler.analytics import calendar
from sop_templates import library

NOW = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)  # Tue 21:30 in Shanghai


@pytest.fixture
def client(engine, clock, settings):
    clock.set(NOW)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        c.headers.update(make_auth_headers(engine, clock.now()))
        yield c


def publish_store_groups(client, groups: int = 4) -> int:
    for n in range(groups):
        answer = client.post(
            "/api/groups", json={"external_id": f"wr_{n}", "name": f"门店{n}群", "tags": ["store"]}
        )
        assert answer.status_code == 201, answer.text
    created = client.post("/api/templates", json=library.load("store_groups"))
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    published = client.post(f"/api/templates/{template_id}/publish", json={})
    assert published.status_code == 200, published.text
    return template_id


def test_tomorrows_group_send_is_on_the_calendar_with_its_group_count(client, engine):
    publish_store_groups(client)
    with Session(engine) as session:
        sends = calendar.upcoming(session, NOW, NOW + timedelta(days=2), NOW)
    at_11 = [s for s in sends if s.touchpoint_name == "午市菜单"]
    assert at_11[0].at == datetime(2027, 3, 3, 3, 0, tzinfo=UTC)  # Wed 11:00 Shanghai
    assert at_11[0].count == 4 and not at_11[0].planned
    assert {s.touchpoint_name for s in sends} == {"午市菜单", "美食小贴士"}
    assert len(sends) == 4  # 11:00 and 18:00, Wed and Thu

    page = client.get("/calendar?view=week&day=2027-03-03")
    assert page.status_code == 200
    assert "明天 · 周三 03-03" in page.text and "4 个群" in page.text
    assert "每天 11:00" in page.text
    month = client.get("/calendar?view=month&day=2027-03-01")
    assert month.status_code == 200 and 'id="calendar-month"' in month.text

    with Session(engine) as session:
        nxt = calendar.next_sends(session, NOW)
    assert len(nxt) == 1
    (first,) = nxt.values()
    assert first.touchpoint_name == "午市菜单" and first.count == 4

    recipients = client.get(
        f"/calendar/recipients?touchpoint_id={at_11[0].touchpoint_id}&at={at_11[0].at.isoformat()}"
    )
    assert recipients.status_code == 200 and recipients.text.count("门店") >= 4


def test_a_planned_occurrence_is_counted_once(client, engine, clock):
    publish_store_groups(client, groups=2)
    # the planner fans out what falls due within its lookahead
    clock.set(datetime(2027, 3, 3, 2, 59, tzinfo=UTC))
    client.app.state.runtime.plan_now()
    with Session(engine) as session:
        planned = [
            s
            for s in calendar.upcoming(
                session, clock.now(), clock.now() + timedelta(hours=2), clock.now()
            )
            if s.planned
        ]
    assert planned, "the planner fanned out the 11:00 occurrence"
    with Session(engine) as session:
        sends = calendar.upcoming(
            session, clock.now(), clock.now() + timedelta(hours=2), clock.now()
        )
    at_11 = [s for s in sends if s.touchpoint_name == "午市菜单"]
    assert len(at_11) == 1 and at_11[0].count == 2
