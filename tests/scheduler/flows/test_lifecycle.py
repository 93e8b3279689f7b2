"""One publish: the API, the CLI and the demo publish a template the same way
(approval, segment enrollment, audit) — scheduler.flows.lifecycle."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml
from factories import store_menu_spec
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli
from api.users.models import AuditEntry
from audiences.schemas import GroupIn
from scheduler.flows import changes
from scheduler.outbox.models import Enrollment
from sop_templates.models import SopTemplate
from sopbot.db import session_scope

runner = CliRunner()
NOW = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def stores(engine, settings, monkeypatch):
    """Three group chats tagged ``store`` and one that is not; the CLI works on
    the test database."""
    monkeypatch.setenv("SOPBOT_DATABASE_URL", settings.database_url)
    with session_scope(engine) as session:
        for i, tags in enumerate([["store"], ["store", "vip"], ["store"], ["office"]]):
            changes.upsert_group(
                session, GroupIn(external_id=f"wr_{i}", name=f"群{i}", tags=tags), NOW
            )
    return engine


def _enrolled(engine) -> int:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(Enrollment)).scalar_one()


def _publish_audit(engine) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        return [
            (e.username, e.summary)
            for e in session.execute(
                select(AuditEntry).where(AuditEntry.action == "template.publish")
            ).scalars()
        ]


def _spec_file(tmp_path) -> str:
    path = tmp_path / "stores.yaml"
    spec = store_menu_spec(segment={"tag": "store"})
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return str(path)


def _via_api(engine, settings, clock, auth_headers, tmp_path) -> dict:
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as client:
        created = client.post("/api/templates", json=store_menu_spec(segment={"tag": "store"}))
        return client.post(f"/api/templates/{created.json()['id']}/publish").json()


def _via_cli_create(engine, settings, clock, auth_headers, tmp_path) -> dict:
    result = runner.invoke(cli, ["template", "create", _spec_file(tmp_path), "--publish"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _via_cli_publish(engine, settings, clock, auth_headers, tmp_path) -> dict:
    created = runner.invoke(cli, ["template", "create", _spec_file(tmp_path)])
    assert created.exit_code == 0, created.output
    result = runner.invoke(cli, ["template", "publish", "门店群每日菜单"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("publish", "who"),
    [(_via_api, "test-admin"), (_via_cli_create, "cli"), (_via_cli_publish, "cli")],
    ids=["api", "cli create --publish", "cli template publish"],
)
def test_a_group_sop_enrolls_all_matching_groups_however_it_is_published(
    stores, settings, clock, auth_headers, tmp_path, publish, who
):
    out = publish(stores, settings, clock, auth_headers, tmp_path)
    assert out["version"] == 1 and out["enrolled"] == 3
    assert _enrolled(stores) == 3  # wr_0, wr_1, wr_2; not the office group
    assert _publish_audit(stores) == [(who, "v1 (keep)")]


def test_the_cli_cannot_skip_approval(stores, tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_REQUIRE_APPROVAL", "true")
    result = runner.invoke(cli, ["template", "create", _spec_file(tmp_path), "--publish"])
    assert result.exit_code == 2
    assert "needs approval before publishing" in result.output
    assert _enrolled(stores) == 0
    with session_scope(stores) as session:
        assert session.execute(select(SopTemplate)).scalars().all() == []  # rolled back


def test_the_demo_publishes_like_the_api(engine, settings, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", settings.database_url)
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    with session_scope(engine) as session:
        by_template = dict(
            session.execute(
                select(SopTemplate.name, func.count(Enrollment.id))
                .join(Enrollment, Enrollment.template_id == SopTemplate.id)
                .where(SopTemplate.target_kind == "group")
                .group_by(SopTemplate.name)
            ).all()
        )
    # both group SOPs (real and time-compressed) took in the three demo stores at publish
    assert sorted(by_template.values()) == [3, 3]
    audited = _publish_audit(engine)
    assert len(audited) == 6 and {who for who, _ in audited} == {"demo"}
