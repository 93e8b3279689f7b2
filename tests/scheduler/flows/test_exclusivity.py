"""Mutually exclusive SOPs (互斥): three live new-friend SOPs that exclude each
other welcome a new friend once, not three times; the other two record the
friend as skipped with the reason. Publishing and its impact count the same way."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import add_group, new_friend_spec, store_menu_spec
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences.models import Account
from scheduler.flows import impact
from scheduler.outbox.models import Delivery, Enrollment
from sop_templates import service as templates_service
from sop_templates.models import Touchpoint
from sopbot.db import session_scope

START = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    clock.set(START)
    with session_scope(engine) as session:
        session.add(Account(external_id="staff_1", name="客服小王"))
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def _live(client, name: str, **spec) -> int:
    created = client.post("/api/templates", json=new_friend_spec(name=name, **spec))
    assert created.status_code in (200, 201), created.text
    template_id = created.json()["id"]
    assert client.post(f"/api/templates/{template_id}/publish").status_code == 200
    return template_id


def test_three_exclusive_new_friend_sops_welcome_a_new_friend_once(client, engine, clock):
    segment = {"kind": "new_friends"}
    first = _live(client, "欢迎 A", segment=segment)
    second = _live(client, "欢迎 B", segment=segment, exclusive_with=[first])
    third = _live(client, "欢迎 C", segment=segment, exclusive_with=[first, second])
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))

    response = client.post(
        "/api/events", json={"kind": "friend_added", "account": "staff_1", "external_id": "wm_new"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["enrolled"], response.json()["excluded"]) == (1, 2)

    with session_scope(engine) as session:
        rows = session.execute(
            select(Enrollment.template_id, Enrollment.status, Enrollment.exit_reason).order_by(
                Enrollment.template_id
            )
        ).all()
        welcomes = session.execute(
            select(Delivery.template_id)
            .join(Touchpoint, Touchpoint.id == Delivery.touchpoint_id)
            .where(Touchpoint.name == "welcome")
        ).all()
    assert rows == [
        (first, "active", None),
        (second, "skipped", f"exclusive: already in SOP #{first}"),
        (third, "skipped", f"exclusive: already in SOP #{first}"),
    ]
    assert welcomes == [(first,)]  # one welcome, not three


def test_without_exclusivity_all_three_welcome(client, engine, clock):
    segment = {"kind": "new_friends"}
    ids = [_live(client, f"欢迎 {n}", segment=segment) for n in "ABC"]
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))
    response = client.post(
        "/api/events", json={"kind": "friend_added", "account": "staff_1", "external_id": "wm_new"}
    )
    assert response.json()["enrolled"] == 3
    with session_scope(engine) as session:
        assert sorted(session.execute(select(Enrollment.template_id)).scalars()) == ids


def test_exclusivity_declared_on_the_other_side_holds_at_publish_and_in_its_impact(
    client, engine, clock
):
    """A group SOP excluding a live one: publishing it (and its impact) leaves
    out the groups already in the other, both ways."""
    for n in range(4):
        add_group(engine, f"g{n}", f"门店{n}群", START)
    seg = {"kind": "groups", "name_pattern": "门店*"}
    created = client.post("/api/templates", json=store_menu_spec(name="老菜单", segment=seg)).json()
    assert client.post(f"/api/templates/{created['id']}/publish").status_code == 200
    old = created["id"]
    created = client.post(
        "/api/templates",
        json=store_menu_spec(name="新菜单", segment=seg, exclusive_with=[old]),
    ).json()
    with session_scope(engine) as session:
        template = templates_service.get_template(session, created["id"])
        numbers = impact.publish_impact(session, template, clock.now())
    assert (numbers.enrolled, numbers.excluded) == (0, 4)
    assert client.post(f"/api/templates/{created['id']}/publish").status_code == 200
    with session_scope(engine) as session:
        statuses = session.execute(
            select(Enrollment.status).where(Enrollment.template_id == created["id"])
        ).scalars()
        assert sorted(statuses) == ["skipped"] * 4
    # a new group joins later: still in the old SOP only
    add_group(engine, "g9", "门店9群", START)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Enrollment.template_id, Enrollment.status).where(Enrollment.target_id == 5)
        ).all()
    assert sorted(rows) == [(old, "active"), (created["id"], "skipped")]
