"""Channel instances over HTTP: secrets never come back, masked values keep the
stored secret, bad configs are explained, connections can be tested."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from channels.models import ChannelInstance
from sopbot.db import session_scope

SECRET = "hmac-secret-do-not-show"
WECOM_SECRET = "corp-secret-do-not-show"


@pytest.fixture
def client(engine, clock, settings):
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        yield signed_in(c, engine, clock.now())


def signed_in(client: TestClient, engine, now, roles=("admin",)) -> TestClient:
    """Send an API token of a user with ``roles`` on every request (api.auth)."""
    from api.users import service as users_service

    with session_scope(engine) as session:
        user = users_service.create_user(
            session, f"u-{'-'.join(roles)}", "a-long-test-password", roles, now
        )
        token = users_service.create_token(session, user.id, "tests", now)
    client.headers["Authorization"] = f"Bearer {token.secret}"
    return client


def stored_config(engine, name: str) -> dict:
    with Session(engine) as session:
        return (
            session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).one().config
        )


def test_create_list_update_never_return_secrets(client, engine):
    created = client.post(
        "/api/channels",
        json={
            "name": "gateway",
            "adapter": "webhook",
            "config": {"url": "https://bot.example.test/hook", "secret": SECRET},
            "policy": {"rate_per_second": 20, "breaker_threshold": 3},
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["config"]["secret"] == "**********"
    assert body["policy"] == {
        "rate_per_second": 20.0,
        "burst": 20,
        "breaker_threshold": 3,
        "breaker_cooldown_seconds": 60.0,
        "max_attempts": 5,
    }
    assert body["breaker"]["state"] == "closed"
    for response in (client.get("/api/channels"), client.get("/api/channels/gateway")):
        assert SECRET not in response.text

    # The UI sends back what it was shown: the stored secret stays.
    shown = client.get("/api/channels/gateway").json()["config"]
    updated = client.patch(
        "/api/channels/gateway", json={"config": {**shown, "timeout_s": 5}, "enabled": False}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["enabled"] is False and SECRET not in updated.text
    assert stored_config(engine, "gateway")["secret"] == SECRET
    assert stored_config(engine, "gateway")["timeout_s"] == 5

    client.patch("/api/channels/gateway", json={"config": {"secret": "rotated"}})
    assert stored_config(engine, "gateway")["secret"] == "rotated"


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"name": "x", "adapter": "nope"}, 409, "unknown channel adapter 'nope'"),
        ({"name": "x", "adapter": "webhook", "config": {}}, 409, "url: Field required"),
        (
            {
                "name": "x",
                "adapter": "wecom",
                "config": {"corp_id": "a", "corp_secret": "**********"},
            },
            409,
            "masked value",
        ),
        ({"name": "Bad Name", "adapter": "mock"}, 422, "pattern"),
        ({"name": "mock", "adapter": "mock"}, 409, "already exists"),
        ({"name": "x", "adapter": "mock", "policy": {"rate_per_second": 0}}, 422, "greater than 0"),
    ],
)
def test_bad_requests_say_what_to_fix(client, payload, status, message):
    response = client.post("/api/channels", json=payload)
    assert response.status_code == status
    assert message in response.text


def test_invalid_secret_value_is_not_echoed_in_the_error(client):
    response = client.post(
        "/api/channels",
        json={"name": "bot", "adapter": "wecom_group_bot", "config": {"webhook_url": WECOM_SECRET}},
    )
    assert response.status_code == 409
    assert "webhook_url" in response.text and WECOM_SECRET not in response.text


def test_unknown_channel_is_404(client):
    assert client.get("/api/channels/nope").status_code == 404
    assert client.patch("/api/channels/nope", json={"enabled": False}).status_code == 404


def test_connection_test_asks_the_platform_without_sending(client):
    client.post(
        "/api/channels",
        json={
            "name": "wecom-a",
            "adapter": "wecom",
            "config": {"corp_id": "ww1", "corp_secret": WECOM_SECRET},
        },
    )

    def fake_wecom(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/gettoken")  # nothing else is called
        if request.url.params["corpsecret"] != WECOM_SECRET:
            return httpx.Response(200, json={"errcode": 40001, "errmsg": "invalid credential"})
        return httpx.Response(200, json={"errcode": 0, "access_token": "t", "expires_in": 7200})

    asyncio.run(client.app.state.http.aclose())
    client.app.state.http = httpx.AsyncClient(transport=httpx.MockTransport(fake_wecom))
    ok = client.post("/api/channels/wecom-a/test").json()
    assert ok == {
        "ok": True,
        "checked": True,
        "detail": "WeCom accepted corp ww1: access token issued",
    }

    client.patch("/api/channels/wecom-a", json={"config": {"corp_secret": "wrong"}})
    bad = client.post("/api/channels/wecom-a/test").json()
    assert bad["ok"] is False and "check corp_id and corp_secret" in bad["detail"]

    mock = client.post("/api/channels/mock/test").json()
    assert mock["ok"] is True


def test_adapter_catalog_lists_every_builtin_with_secret_fields_flagged(client):
    catalog = {a["name"]: a for a in client.get("/api/channels/adapters").json()}
    assert {"mock", "webhook", "wecom", "wecom_group_bot", "apprise"} <= set(catalog)
    wecom = catalog["wecom"]
    assert wecom["capabilities"]["modes"] == ["moment", "remind", "task", "welcome"]
    secret = wecom["config_schema"]["properties"]["corp_secret"]
    assert secret.get("writeOnly") is True and secret.get("format") == "password"


def test_only_admins_change_channels(client, engine, clock):
    signed_in(client, engine, clock.now(), roles=("operator",))
    assert client.get("/api/channels").status_code == 200  # masked anyway
    assert client.post("/api/channels", json={"name": "x", "adapter": "mock"}).status_code == 403
    assert client.post("/api/channels/mock/breaker/reset").status_code == 403
