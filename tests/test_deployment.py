"""docker-compose.yml and the Dockerfile are checked here, since no Docker
engine runs in CI."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_postgres_api_and_two_workers():
    services = _compose()["services"]
    assert {"postgres", "api", "worker-1", "worker-2", "sopbot"} <= services.keys()
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["api"]["command"][:2] == ["sopbot", "api"]
    assert services["api"]["ports"] == ["8000:8000"]
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert worker["command"] == ["sopbot", "worker"]
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert worker["environment"]["SOPBOT_DATABASE_URL"].startswith("postgresql+psycopg://")
    worker_ids = {services[n]["environment"]["SOPBOT_WORKER_ID"] for n in ("worker-1", "worker-2")}
    assert len(worker_ids) == 2


def test_compose_database_urls_match_the_postgres_service():
    compose = _compose()
    pg = compose["services"]["postgres"]["environment"]
    url = compose["services"]["api"]["environment"]["SOPBOT_DATABASE_URL"]
    assert url == (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )


def test_embedded_service_keeps_sqlite_on_a_volume():
    compose = _compose()
    embedded = compose["services"]["sopbot"]
    assert embedded["environment"]["SOPBOT_DATABASE_URL"] == "sqlite:////data/sopbot.db"
    assert "sopbot-data:/data" in embedded["volumes"]
    assert "sopbot-data" in compose["volumes"] and "pgdata" in compose["volumes"]


def test_compose_commands_are_real_cli_commands():
    from typer.main import get_command

    from api.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for service in _compose()["services"].values():
        if "command" in service and service["command"][0] == "sopbot":
            assert service["command"][1] in commands


def test_dockerfile_installs_every_package_and_runs_sopbot():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("sopbot", "scheduler", "channels", "audiences", "sop_templates", "api"):
        assert f"COPY {package} {package}" in dockerfile
    assert 'CMD ["sopbot", "serve"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
