"""The CLI: create/publish from a file, add a contact, enroll, list."""

from __future__ import annotations

import json

import yaml
from factories import new_friend_spec
from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


def test_create_publish_enroll_from_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    spec_file = tmp_path / "sop.yaml"
    spec_file.write_text(yaml.safe_dump(new_friend_spec(), allow_unicode=True), encoding="utf-8")

    result = runner.invoke(app, ["template", "create", str(spec_file), "--publish"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "published"

    result = runner.invoke(
        app,
        ["contact", "add", "wm_cli", "--name", "小红", "--joined-at", "2027-03-01T21:30:00+08:00"],
    )
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["template", "enroll", "新好友 SOP", "wm_cli"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deliveries"] == 3

    listing = runner.invoke(app, ["template", "list"])
    assert "新好友 SOP" in listing.output


def test_bad_file_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ntouchpoints:\n  - name: a\n    timing: cron 0 99 * * *\n    content: hi\n"
    )
    result = runner.invoke(app, ["template", "validate", str(bad)])
    assert result.exit_code == 2
    assert "touchpoints[0].timing.cron" in result.output

    missing = runner.invoke(app, ["template", "create", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read" in missing.output

    not_yaml = tmp_path / "x.yaml"
    not_yaml.write_text("- just\n- a list\n")
    result = runner.invoke(app, ["template", "create", str(not_yaml)])
    assert result.exit_code == 2 and "must hold one template" in result.output


def test_demo_loads_three_scenarios_twice_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["templates"] == 6
    second = runner.invoke(app, ["demo"])
    assert json.loads(second.output) == {"templates": 0, "enrolled": 0}
