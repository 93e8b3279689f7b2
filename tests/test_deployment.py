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
        # SIGTERM: the worker exits within SOPBOT_SHUTDOWN_SECONDS (default 8 s),
        # before compose's SIGKILL
        assert worker["stop_grace_period"] == "10s"
        bound = float(worker["environment"].get("SOPBOT_SHUTDOWN_SECONDS", 8))
        assert bound < 10
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
    for package in (
        "sopbot",
        "scheduler",
        "channels",
        "audiences",
        "sop_templates",
        "api",
        "migrations",
    ):
        assert f"COPY {package} {package}" in dockerfile
    assert 'CMD ["sopbot", "serve", "--migrate"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_migrate_runs_once_before_api_and_workers():
    services = _compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["sopbot", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"
    assert (
        migrate["environment"]["SOPBOT_DATABASE_URL"]
        == (services["api"]["environment"]["SOPBOT_DATABASE_URL"])
    )
    # Built once (by migrate), used by all.
    assert "build" in migrate and migrate["image"] == services["api"]["image"]
    for name in ("api", "worker-1", "worker-2"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["image"] == migrate["image"]


def test_embedded_service_migrates_its_own_sqlite():
    command = _compose()["services"]["sopbot"]["command"]
    assert command[:2] == ["sopbot", "serve"] and "--migrate" in command


def test_workers_expose_metrics_and_a_healthcheck():
    services = _compose()["services"]
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        port = worker["environment"]["SOPBOT_METRICS_PORT"]
        assert port in worker["expose"]
        assert f"127.0.0.1:{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    assert services["api"]["environment"]["SOPBOT_LOG_FORMAT"] == "json"


def test_every_compose_setting_is_a_real_setting():
    from sopbot.settings import Settings

    known = {f"SOPBOT_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("SOPBOT_"):
                assert key in known, f"{name}: {key} is not a setting"


def test_cli_commands_in_compose_include_db_upgrade():
    from typer.main import get_command

    from api.cli import app

    db = get_command(app).commands["db"]  # type: ignore[attr-defined]
    assert {"upgrade", "current"} <= set(db.commands)


def test_readme_configuration_table_lists_every_setting():
    """One table documents the whole configuration; it is generated from the
    settings model (``sopbot.settings.markdown_table``) and must be kept equal."""
    from sopbot.settings import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, (
        "README's configuration table is out of date: paste "
        "`python -c 'from sopbot.settings import markdown_table; print(markdown_table())'`"
    )
