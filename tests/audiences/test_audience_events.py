"""POST /api/events: validation that names the field, batches applied all or
nothing with a per-item report, idempotency ids, and what each kind changes."""

from __future__ import annotations

import pytest
from audience_helpers import snapshot
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences.models import Contact, GroupChat, InboxEvent, Tag
from audiences.service import tags_of
from sopbot.db import session_scope


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        assert c.post("/api/accounts", json={"external_id": "staff_1"}).status_code == 201
        yield c


ADD = {"kind": "friend_added", "account": "staff_1", "external_id": "wm1", "name": "张三"}


def _without(event, key):
    return {k: v for k, v in event.items() if k != key}


@pytest.mark.parametrize(
    ("event", "loc", "message"),
    [
        ({**ADD, "kind": "friend_made"}, "kind", "unknown event kind 'friend_made'"),
        (_without(ADD, "kind"), "kind", "missing"),
        (_without(ADD, "account"), "account", "field required"),
        (_without(ADD, "external_id"), "external_id", "field required"),
        ({**ADD, "account": "staff_404"}, "account", "unknown account 'staff_404'"),
        ({**ADD, "occurred_at": "2027-03-01T21:30:00"}, "occurred_at", "UTC offset"),
        ({**ADD, "occurred_at": "yesterday"}, "occurred_at", "datetime"),
        ({**ADD, "timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({**ADD, "favourite": "tea"}, "favourite", "unknown field"),
        ({**ADD, "tags": ["vip", " "]}, "tags", "empty"),
        ({**ADD, "id": ""}, "id", "at least 1 character"),
        ("friend_added wm1", "event", "JSON object"),
        ({"kind": "tag_added", "external_id": "wm404", "tags": ["vip"]}, "external_id", "unknown contact"),
        ({"kind": "tag_added", "external_id": "wm1", "tags": []}, "tags", "at least 1 item"),
        ({"kind": "tag_added", "target": "room", "external_id": "x", "tags": ["a"]}, "target", "'contact' or 'group'"),
        ({"kind": "contact_updated", "external_id": "wm404"}, "external_id", "unknown contact"),
        ({"kind": "contact_updated", "external_id": "wm1", "status": "gone"}, "status", "'active'"),
        ({"kind": "friend_deleted", "account": "staff_2", "external_id": "wm1"}, "account", "unknown account"),
        ({"kind": "group_created", "external_id": "wr1", "owner": "staff_404"}, "owner", "unknown account"),
        ({"kind": "group_created", "external_id": "wr1", "member_count": -1}, "member_count", "greater than or equal to 0"),
        ({"kind": "group_dissolved", "external_id": "wr404"}, "external_id", "unknown group chat"),
        ({"kind": "group_member_joined", "external_id": "wr404"}, "external_id", "unknown group chat"),
        ({"kind": "group_dissolved"}, "external_id", "field required"),
    ],
)  # fmt: skip
def test_bad_events_are_rejected_naming_the_field(client, engine, event, loc, message):
    before = snapshot(engine)
    response = client.post("/api/events", json=event)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["errors"][0]["index"] == 0
    assert detail["errors"][0]["loc"] == loc
    assert message in detail["errors"][0]["msg"]
    assert detail["message"] == "1 of 1 event rejected; nothing was applied"
    assert snapshot(engine) == before


def test_a_batch_is_all_or_nothing_with_a_report_per_item(client, engine):
    batch = [
        ADD,
        {"kind": "tag_added", "account": "staff_1", "external_id": "wm1", "tags": ["vip"]},
        {"kind": "friend_added", "account": "staff_9", "external_id": "wm2"},
        {"kind": "group_dissolved", "external_id": "wr404"},
        {"kind": "gossip"},
    ]
    before = snapshot(engine)
    response = client.post("/api/events", json=batch)
    assert response.status_code == 422
    detail = response.json()["detail"]
    # shape errors are found first: nothing is looked up until every item parses
    assert [(e["index"], e["loc"]) for e in detail["errors"]] == [(4, "kind")]
    assert [r["status"] for r in detail["results"]] == ["not_applied"] * 4 + ["rejected"]
    assert snapshot(engine) == before

    response = client.post("/api/events", json=batch[:4])
    detail = response.json()["detail"]
    assert [(e["index"], e["loc"]) for e in detail["errors"]] == [
        (2, "account"),
        (3, "external_id"),
    ]
    assert [r["status"] for r in detail["results"]] == [
        "not_applied",
        "not_applied",
        "rejected",
        "rejected",
    ]
    assert snapshot(engine) == before  # wm1 was not created although its events were fine

    response = client.post("/api/events", json=batch[:2])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["applied"], body["created"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["applied", "applied"]


def test_idempotency_ids_make_replays_change_nothing(client, engine):
    first = client.post("/api/events", json=[{**ADD, "id": "a1"}, {**ADD, "id": "a2", "name": "x"}])
    assert first.json()["applied"] == 2
    replay = client.post(
        "/api/events",
        json=[
            {**ADD, "id": "a1", "name": "改名"},
            {"kind": "tag_added", "id": "a3", "external_id": "wm1", "tags": ["vip"]},
        ],
    )
    body = replay.json()
    assert [r["status"] for r in body["results"]] == ["duplicate", "applied"]
    assert (body["applied"], body["duplicates"]) == (1, 1)
    with session_scope(engine) as session:
        contact = session.execute(select(Contact)).scalar_one()
        assert contact.name == "x"  # the replayed rename was ignored
        keys = session.execute(select(InboxEvent.dedupe_key).order_by(InboxEvent.id)).scalars()
        assert list(keys) == ["api:a1", "api:a2", "api:a3"]


def test_events_change_the_picture_of_the_community(client, engine):
    events = [
        {**ADD, "attributes": {"city": "上海", "child_age": 3}, "tags": ["新客"]},
        {"kind": "contact_updated", "external_id": "wm1", "attributes": {"child_age": None, "vip": True}, "name": "张三丰"},
        {"kind": "tag_added", "external_id": "wm1", "tags": ["vip", "孕期"], "tag_group": "阶段"},
        {"kind": "tag_removed", "external_id": "wm1", "tags": ["新客"]},
        {"kind": "group_created", "external_id": "wr1", "name": "徐汇店福利群", "owner": "staff_1", "member_count": 10},
        {"kind": "group_member_joined", "external_id": "wr1", "members": ["a", "b", "c"]},
        {"kind": "group_member_left", "external_id": "wr1", "count": 2},
        {"kind": "group_updated", "external_id": "wr1", "name": "徐汇旗舰店群"},
        {"kind": "tag_added", "target": "group", "external_id": "wr1", "tags": ["store"]},
        {"kind": "group_updated", "external_id": "wr2", "create_missing": True, "name": "新群"},
        {"kind": "group_dissolved", "external_id": "wr2"},
    ]  # fmt: skip
    response = client.post("/api/events", json=events)
    assert response.status_code == 200, response.text
    with session_scope(engine) as session:
        contact = session.execute(select(Contact)).scalar_one()
        assert contact.name == "张三丰"
        assert contact.attributes == {"city": "上海", "vip": True}
        assert sorted(tags_of(session, "contact", [contact.id])[contact.id]) == ["vip", "孕期"]
        groups = {g.external_id: g for g in session.execute(select(GroupChat)).scalars()}
        assert groups["wr1"].member_count == 11
        assert groups["wr1"].name == "徐汇旗舰店群"
        assert groups["wr2"].status == "dissolved"
        assert tags_of(session, "group", [groups["wr1"].id])[groups["wr1"].id] == ["store"]
        tag_group = session.execute(select(Tag.group_name).where(Tag.name == "孕期")).scalar_one()
        assert tag_group == "阶段"


def test_a_contact_of_two_accounts_and_events_without_account(client, engine):
    client.post("/api/accounts", json={"external_id": "staff_2"})
    client.post("/api/events", json=[ADD, {**ADD, "account": "staff_2"}])
    # a tag without an account applies to the customer under every account
    client.post("/api/events", json={"kind": "tag_added", "external_id": "wm1", "tags": ["vip"]})
    # deleting the friendship with one account leaves the other
    client.post(
        "/api/events", json={"kind": "friend_deleted", "account": "staff_2", "external_id": "wm1"}
    )
    with session_scope(engine) as session:
        contacts = session.execute(select(Contact).order_by(Contact.id)).scalars().all()
        assert [c.status for c in contacts] == ["active", "deleted"]
        assert tags_of(session, "contact", [c.id for c in contacts]) == {
            contacts[0].id: ["vip"],
            contacts[1].id: ["vip"],
        }


def test_friend_re_added_after_deletion_is_a_new_friendship(client, engine, clock):
    client.post("/api/events", json=ADD)
    client.post(
        "/api/events", json={"kind": "friend_deleted", "account": "staff_1", "external_id": "wm1"}
    )
    clock.advance(days=3)
    client.post("/api/events", json=ADD)
    with session_scope(engine) as session:
        contact = session.execute(select(Contact)).scalar_one()
        assert contact.status == "active" and contact.joined_at == clock.now()


def test_accounts_and_inbox_listing(client):
    assert (
        client.post("/api/accounts", json={"external_id": "staff_1", "name": "小王"}).json()["name"]
        == "小王"
    )
    assert [a["external_id"] for a in client.get("/api/accounts").json()] == ["staff_1"]
    client.post("/api/events", json={**ADD, "id": "x1"})
    inbox = client.get("/api/events/inbox").json()
    assert inbox[0]["kind"] == "friend_added" and inbox[0]["status"] == "applied"
    assert inbox[0]["payload"]["external_id"] == "wm1"
    assert client.post("/api/events", json=[]).status_code == 422
