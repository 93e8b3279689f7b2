"""`sopbot user create` and the one-time setup link printed by `serve`."""

from __future__ import annotations

import json
from types import SimpleNamespace

from typer.testing import CliRunner

from api.cli import _print_setup_link, app
from api.users import service as users_service
from sopbot.db import session_scope

runner = CliRunner()


def test_user_create_makes_an_admin_with_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("SOPBOT_NEW_PASSWORD", "long-password")
    result = runner.invoke(app, ["user", "create", "boss", "--role", "admin", "--token", "ci"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["roles"] == "admin" and out["token"].startswith("sopbot_")
    listed = runner.invoke(app, ["user", "list"])
    assert "boss" in listed.output and "admin" in listed.output
    again = runner.invoke(app, ["user", "create", "boss", "--role", "operator"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_user_create_refuses_an_unknown_role(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    result = runner.invoke(
        app, ["user", "create", "x1", "--role", "boss", "--password", "long-password"]
    )
    assert result.exit_code == 2 and "unknown role boss" in result.output


def test_serve_prints_a_setup_link_only_while_there_are_no_users(engine, clock, capsys):
    fake_app = SimpleNamespace(state=SimpleNamespace(engine=engine, clock=clock))
    _print_setup_link(fake_app, "0.0.0.0", 8000)
    printed = capsys.readouterr().out
    assert "http://127.0.0.1:8000/setup?token=" in printed
    token = printed.split("setup?token=")[1].split()[0]
    with session_scope(engine) as session:
        users_service.complete_setup(session, token, "boss", "long-password", clock.now())
    _print_setup_link(fake_app, "0.0.0.0", 8000)
    assert "setup" not in capsys.readouterr().out
