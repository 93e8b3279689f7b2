"""POST /api/templates/validate with content that would loop for hours
answers at once, with a clear error."""

from __future__ import annotations

import time

import pytest
from factories import new_friend_spec
from fastapi.testclient import TestClient

from api.app import create_app

NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_validate_with_two_nested_loops_answers_within_a_second(client):
    spec = new_friend_spec(touchpoints=[{"name": "a", "timing": "+0m", "content": NESTED}])
    started = time.perf_counter()
    response = client.post("/api/templates/validate", json=spec)
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 422
    assert "200 ms" in response.text and "touchpoints[0].content[0].text" in response.text
