"""Ids are ASCII digits: ``²`` and ``①`` (digits to ``str.isdigit()``, not to
``int()``) are a 4xx, never a 500, and ``٣`` or ``１`` never resolve to ids 3 and 1."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from auth_helpers import make_auth_headers
from factories import add_contact, add_group, new_friend_spec, publish
from fastapi.testclient import TestClient

from api.app import create_app
from sopbot.ids import parse_id

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
LOOKALIKES = ("²", "①", "٣", "１", "3²")


@pytest.fixture
def client(engine, clock, settings):
    clock.set(T0)
    publish(engine, new_friend_spec(), T0)
    for i in (1, 2, 3):
        add_contact(engine, f"wm_{i}", f"客户{i}", T0)
        add_group(engine, f"wr_{i}", f"群{i}", T0)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=make_auth_headers(engine, T0)) as c:
        yield c


def test_only_ascii_digits_make_an_id():
    assert [parse_id(s) for s in ("3", "0012", 7)] == [3, 12, 7]
    assert [parse_id(s) for s in (*LOOKALIKES, "", " 3", "+3", "1" * 19, True)] == [None] * 10


@pytest.mark.parametrize("key", LOOKALIKES)
def test_contact_and_group_lookups_by_lookalike_digits_are_not_found(client, key):
    for path in (
        f"/api/groups/{key}",
        f"/api/groups/{key}/sops",
        f"/api/contacts/{key}",
        f"/api/contacts/{key}/sops",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
    assert client.get("/api/groups/3").json()["external_id"] == "wr_3"


@pytest.mark.parametrize("key", LOOKALIKES)
def test_preview_test_send_and_enrollment_targets_refuse_lookalikes(client, key):
    preview = client.get("/api/templates/1/preview", params={"target": key})
    assert 400 <= preview.status_code < 500, preview.text
    enrolled = client.post("/api/templates/1/enrollments", json={"targets": [key]})
    assert 400 <= enrolled.status_code < 500, enrolled.text
    sent = client.post("/api/templates/1/test-send", json={"target": key, "touchpoint": 1})
    assert 400 <= sent.status_code < 500, sent.text


@pytest.mark.parametrize("key", LOOKALIKES)
def test_pages_and_log_filters_answer_4xx_for_lookalike_ids(client, key):
    for path, params in (
        ("/log", {"limit": key}),
        ("/report/1", {"version_id": key}),
        ("/api/deliveries", {"template_id": key}),
        ("/api/stats/templates/1", {"version_id": key}),
    ):
        answer = client.get(path, params=params)
        assert 400 <= answer.status_code < 500, (path, params, answer.status_code)
