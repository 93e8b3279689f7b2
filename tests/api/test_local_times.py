"""One reading of times: a date-time without a UTC offset is wall-clock time in
the template's zone, in the enroll API, the CLI and the timeline alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml
from factories import add_contact, deliveries, new_friend_spec, publish
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli_app

T0 = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
ONE = [{"name": "now", "timing": "+0m", "content": "{{ contact.name }}"}]
# 2027-03-01 09:00 in Shanghai is 01:00 UTC
SHANGHAI_NINE = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_enroll_api_reads_an_anchor_without_offset_in_the_template_zone(client, engine, clock):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(touchpoints=ONE), T0)
    add_contact(engine, "wm_1", "甲", T0)
    response = client.post(
        f"/api/templates/{template_id}/enrollments",
        json={"targets": ["wm_1"], "anchor_at": "2027-03-01T09:00:00"},
    )
    assert response.status_code == 200, response.text
    (row,) = deliveries(engine)
    assert row.due_at.replace(tzinfo=UTC) == SHANGHAI_NINE
    timeline = client.get(  # the timeline reads it the same way
        f"/api/templates/{template_id}/timeline", params={"sample_at": "2027-03-01T09:00:00"}
    )
    assert timeline.status_code == 200, timeline.text
    (entry,) = timeline.json()["entries"]
    assert entry["due_at"].startswith("2027-03-01T01:00")


def test_cli_anchor_without_offset_is_template_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    spec_file = tmp_path / "sop.yaml"
    spec_file.write_text(
        yaml.safe_dump(new_friend_spec(touchpoints=ONE), allow_unicode=True), encoding="utf-8"
    )
    assert (
        runner.invoke(cli_app, ["template", "create", str(spec_file), "--publish"]).exit_code == 0
    )
    added = runner.invoke(
        cli_app, ["contact", "add", "wm_cli", "--joined-at", "2027-03-01T00:00:00+00:00"]
    )
    assert added.exit_code == 0, added.output
    result = runner.invoke(
        cli_app, ["template", "enroll", "新好友 SOP", "wm_cli", "--anchor", "2027-03-01 09:00:00"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deliveries"] == 1
    from sqlalchemy import select

    from scheduler.outbox.models import Delivery
    from sopbot.db import make_engine, session_scope

    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with session_scope(engine) as session:
        (due,) = session.execute(select(Delivery.due_at)).scalars()
    engine.dispose()
    assert due.replace(tzinfo=UTC) == SHANGHAI_NINE
