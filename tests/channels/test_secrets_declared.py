"""Secrets by declaration: a config field that can carry a credential is
declared secret in its adapter's config model, and then never shown — not by
the API, not on the channel pages (also after a refused form), not in the audit
log. Sending the masked value back keeps the stored secret.

The test walks every registered adapter's config schema: every field is either
declared secret or listed here as reviewed "not a credential", so a new field
(or a new adapter) must be decided on before this passes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from auth_helpers import make_user
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from api.users.models import AuditEntry
from channels import service as channels_service
from channels.models import ChannelInstance
from channels.registry import adapter_class, available_adapters

try:
    import apprise  # noqa: F401 - an optional extra
except ImportError:  # its channels are then not offered
    APPRISE = False
else:
    APPRISE = True

M = "mark7f3aSECRET"  # the credential that must never be shown

# Valid configs with the marker in every secret field (several cases where the
# secret fields exclude each other).
CASES: dict[str, list[dict[str, Any]]] = {
    "mock": [{}],
    "webhook": [
        {
            "url": f"https://hooks.example.test/in?token={M}",
            "secret": M,
            "headers": {"Authorization": f"Bearer {M}", "X-Api-Key": M},
        },
        {"url": f"https://hook:{M}@hooks.example.test/in"},
    ],
    "wecom": [{"corp_id": "ww_corp", "corp_secret": M, "agent_id": 1000002}],
    "wecom_group_bot": [
        {"key": M},
        {"webhook_url": f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={M}"},
    ],
    "apprise": [{"urls": [f"json://hooks.example.test/{M}"]}],
}

# Reviewed: URLs shown with their user info and query masked ...
URLS: dict[str, set[str]] = {
    "webhook": {"url"},
    "wecom": {"base_url"},
    "wecom_group_bot": {"base_url"},
}
# ... and fields that hold no credential, shown as they are.
NOT_CREDENTIALS: dict[str, set[str]] = {
    "mock": {"fail_mode", "fail_targets", "latency_ms", "retry_after_s", "persist", "max_batch"},
    "webhook": {"timeout_s", "max_concurrency"},
    "wecom": {"corp_id", "agent_id", "timeout_s", "remind_after_hours", "mass_send_quota"},
    "wecom_group_bot": {"timeout_s"},
    "apprise": {"title", "body_format", "max_concurrency"},
}


def _carries_marker(value: Any) -> bool:
    return M in json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("adapter", sorted(available_adapters()))
def test_every_config_field_is_decided_and_every_secret_is_exercised(adapter: str) -> None:
    assert adapter in CASES and adapter in NOT_CREDENTIALS, f"decide {adapter!r}'s secrets here"
    if adapter == "apprise" and not APPRISE:
        pytest.skip("apprise is not installed")
    properties = adapter_class(adapter).config_model.model_json_schema()["properties"]
    secrets = channels_service.secret_fields(adapter)
    urls = {name for name, prop in properties.items() if prop.get("url_credentials")}
    assert urls == URLS.get(adapter, set())
    assert not (secrets | urls) & NOT_CREDENTIALS[adapter]
    assert set(properties) == secrets | urls | NOT_CREDENTIALS[adapter], "an undecided field"
    marked = {key for case in CASES[adapter] for key, v in case.items() if _carries_marker(v)}
    # Each declared secret carries the marker; no field shown as it is does.
    assert secrets <= marked <= secrets | urls


@pytest.fixture
def admin(engine, clock, settings):
    """A TestClient logged in as an admin; yields (client, csrf token)."""
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    make_user(engine, clock.now(), "root", ["admin"])
    with TestClient(app) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        done = client.post(
            "/login", data={"username": "root", "password": "test-password", "csrf_token": token}
        )
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)  # type: ignore[union-attr]
        yield client, csrf


def _stored(engine, name: str) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).one()
        return dict(row.config)


def test_no_response_page_or_audit_entry_shows_a_declared_secret(admin, engine) -> None:
    client, csrf = admin
    shown: list[str] = []

    def seen(response: Any, status: int = 200) -> Any:
        assert response.status_code == status, response.text[:500]
        shown.append(response.text)
        return response

    for adapter, cases in CASES.items():
        if adapter == "apprise" and not APPRISE:
            continue
        for i, config in enumerate(cases):
            name = f"{adapter.replace('_', '-')}-{i}"
            created = seen(
                client.post(
                    "/api/channels",
                    json={"name": name, "adapter": adapter, "config": config},
                    headers={"X-CSRF-Token": csrf},
                ),
                201,
            )
            masked = created.json()["config"]
            seen(client.get(f"/api/channels/{name}"))
            seen(client.get(f"/channels/{name}"))
            # The config as shown, sent back: every stored secret is kept.
            seen(
                client.patch(
                    f"/api/channels/{name}",
                    json={"config": masked, "enabled": False},
                    headers={"X-CSRF-Token": csrf},
                )
            )
            assert {k: v for k, v in _stored(engine, name).items() if k in config} == config
            # The same through the channel page's form.
            saved = client.post(
                f"/channels/{name}",
                data={"csrf_token": csrf, "config": json.dumps(masked), "enabled": "on"},
                follow_redirects=False,
            )
            assert saved.status_code in (302, 303), saved.text[:500]
            assert {k: v for k, v in _stored(engine, name).items() if k in config} == config
            # A refused form shows back what was typed, but not its secrets.
            refused = {**config, "no_such_option": M}
            seen(
                client.post(
                    f"/channels/{name}",
                    data={"csrf_token": csrf, "config": json.dumps(refused), "enabled": "on"},
                ),
                422,
            )
            seen(
                client.post(
                    "/channels",
                    data={
                        "csrf_token": csrf,
                        "name": "Not A Valid Name",
                        "adapter": adapter,
                        "config": json.dumps(config),
                    },
                ),
                422,
            )
    seen(client.get("/api/channels"))
    seen(client.get("/channels"))
    seen(client.get("/audit"))

    leaks = [text[max(0, text.find(M) - 200) : text.find(M) + 50] for text in shown if M in text]
    assert leaks == []
    with Session(engine) as session:
        entries = session.exec(select(AuditEntry)).all()
        assert entries  # the changes were recorded ...
        assert not any(_carries_marker(e.model_dump(mode="json")) for e in entries)  # ... blind
