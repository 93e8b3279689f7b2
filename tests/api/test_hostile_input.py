"""Whatever a client sends, the answer is a small 4xx, never a 500: lone
surrogates, NaN/Infinity/1e400, NUL and control characters in identifiers, a
30 MB field, a body over the size limit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from auth_helpers import make_auth_headers
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.errors import _bounded_problem
from audiences.models import Contact
from sopbot.db import reader

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def limit() -> int:
    return 10 * 1024 * 1024


@pytest.fixture
def client(engine, clock, settings, limit):
    clock.set(T0)
    settings.max_body_bytes = limit
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    headers = {**make_auth_headers(engine, T0), "content-type": "application/json"}
    with TestClient(app, headers=headers, raise_server_exceptions=False) as c:
        yield c


def _contacts(engine) -> int:
    with reader(engine).connect() as conn:
        return conn.execute(select(func.count()).select_from(Contact)).scalar_one()


@pytest.mark.parametrize(
    "body",
    [
        rb'{"external_id": "\ud800", "name": "x"}',
        rb'{"external_id": "wm_1", "name": "\udfff"}',
        b'{"external_id": NaN, "name": "x"}',
        b'{"external_id": "wm_1", "member_count": Infinity}',
        b'{"external_id": "wm_1", "attributes": {"score": -Infinity}}',
        b'{"external_id": "wm_1", "attributes": {"score": 1e400}}',
        rb'{"external_id": "wm\u0000_1"}',
        rb'{"external_id": "wm\n1"}',
        rb'{"external_id": "wm\u00071"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_json_is_a_422_and_nothing_is_stored(client, engine, body):
    for path in ("/api/contacts", "/api/groups"):
        answer = client.post(path, content=body)
        assert answer.status_code == 422, (path, answer.status_code, answer.text[:300])
        assert isinstance(answer.json()["detail"], list)
    assert _contacts(engine) == 0


def test_a_finite_number_and_an_escaped_emoji_still_pass(client, engine):
    body = rb'{"external_id": "wm_1", "name": "\ud83d\ude00", "attributes": {"score": 1e300}}'
    answer = client.post("/api/contacts", content=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["name"] == "😀"


@pytest.mark.parametrize("limit", [100 * 1024 * 1024])
def test_a_30_mb_field_gets_a_small_error(client):
    name = "名" * 10_000_000  # 30 MB of UTF-8
    answer = client.post("/api/contacts", json={"external_id": "wm_1", "name": name})
    assert answer.status_code == 422
    assert len(answer.content) < 2_000
    assert answer.json()["detail"][0]["loc"] == ["body", "name"]


def test_a_body_over_the_limit_is_a_413(client, engine, settings):
    answer = client.post("/api/contacts", content=b'{"name": "' + b"x" * 11_000_000 + b'"}')
    assert answer.status_code == 413
    assert _contacts(engine) == 0


def test_the_422_handler_bounds_and_encodes_any_problem():
    problem = _bounded_problem(
        {
            "type": "string_type",
            "loc": ("body", "name\ud800"),
            "msg": "bad " * 1_000,
            "input": "\ud800" + "x" * 1_000,
            "ctx": {"limit": float("nan"), "error": ValueError("x"), "big": 10**100},
        }
    )
    assert problem["loc"] == ["body", "name?"]
    assert problem["input"].startswith("?x") and len(problem["input"]) == 201
    assert len(problem["msg"]) == 501
    assert problem["ctx"] == {"limit": "nan", "error": "ValueError", "big": "a 333-bit integer"}


def test_a_one_value_query_parameter_sent_twice_is_a_422(client):
    """``?status=active&status=deleted`` used to answer with one of them, silently."""
    answer = client.get("/api/contacts?status=active&status=deleted")
    assert answer.status_code == 422
    assert "status" in answer.text
    assert client.get("/api/contacts?status=active").status_code == 200
