"""Fixtures shared by the outcome tests (goals, links, variants, holdout, forecast)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    """The API on the test database and clock, signed in, without a scheduler.

    Clicks are written only when a test flushes them: the recorder's own thread
    waits an hour, so it can never write them first on a loaded machine."""
    settings = settings.model_copy(update={"link_click_flush_seconds": 3600.0})
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c
