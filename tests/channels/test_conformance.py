"""One conformance test over every registered adapter.

Each adapter gets a harness (a config and a fake backend that works or fails);
an adapter registered without one fails here, so a new channel cannot skip the
contract: one result per message in order, failures as results (never raised),
unsupported modes refused as permanent errors, secrets never shown.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from channels import service as channels_service
from channels.base import (
    AdapterConfig,
    AdapterContext,
    Capabilities,
    ChannelAdapter,
    OutboundMessage,
    ResultStatus,
    connection_checker,
    task_poller,
)
from channels.registry import adapter_class, available_adapters
from sopbot.clock import ManualClock

apprise = pytest.importorskip("apprise")

APPRISE_CALLS: list[dict[str, Any]] = []
APPRISE_FAIL = {"on": False}


@apprise.decorators.notify(on="sopbotconformance")
def _apprise_fake(
    body: str, title: str, notify_type: str, meta: dict, *args: Any, **kw: Any
) -> bool:
    APPRISE_CALLS.append({"body": body, "host": meta.get("host")})
    return not APPRISE_FAIL["on"]


Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Harness:
    config: dict[str, Any]
    secrets: list[str]  # values that must never be shown
    ok: Handler | None = None
    failing: Handler | None = None
    failing_config: dict[str, Any] = field(default_factory=dict)  # merged in for the failing run
    setup_failure: Callable[[], None] | None = None


def _wecom(fail: bool) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/cgi-bin/", 1)[-1]
        if path == "gettoken":
            return httpx.Response(
                200, json={"errcode": 0, "access_token": "tok", "expires_in": 7200}
            )
        if fail:
            return httpx.Response(200, json={"errcode": -1, "errmsg": "system busy"})
        return httpx.Response(200, json={"errcode": 0, "msgid": "task-1", "fail_list": []})

    return handle


HARNESSES: dict[str, Harness] = {
    "mock": Harness(config={}, secrets=[], failing_config={"fail_mode": "retryable"}),
    "webhook": Harness(
        config={"url": "https://hooks.example.test/sopbot", "secret": "hook-secret-value"},
        secrets=["hook-secret-value"],
        ok=lambda r: httpx.Response(200, json={"id": "m-1"}),
        failing=lambda r: httpx.Response(503, text="down"),
    ),
    "wecom": Harness(
        config={"corp_id": "ww_corp", "corp_secret": "corp-secret-value", "agent_id": 1000002},
        secrets=["corp-secret-value"],
        ok=_wecom(False),
        failing=_wecom(True),
    ),
    "wecom_group_bot": Harness(
        config={"key": "robot-key-value"},
        secrets=["robot-key-value"],
        ok=lambda r: httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}),
        failing=lambda r: httpx.Response(502),
    ),
    "apprise": Harness(
        config={"urls": ["sopbotconformance://{target}/apprise-token-value"]},
        secrets=["apprise-token-value"],
        setup_failure=lambda: APPRISE_FAIL.update(on=True),
    ),
}

ALL_MODES = {"send", "task", "remind"}
PLATFORM_MODES = {"welcome", "moment"}  # WeCom-only; covered by tests/channels/test_wecom_*
ALL_TARGETS = {"contact", "group"}
ALL_PARTS = {"text", "image", "link", "miniprogram", "file", "video"}  # channels.base.PartKind


def _messages(caps: Capabilities, mode: str, count: int) -> list[OutboundMessage]:
    target = "contact" if "contact" in caps.targets else "group"
    return [
        OutboundMessage(
            delivery_id=i + 1,
            idempotency_key=f"sopbot-d{i + 1}",
            target_kind=target,  # type: ignore[arg-type]
            target_external_id=f"ext_{i + 1}",
            account_external_id="staff_li",
            parts=[{"kind": "text", "text": f"您好 {i + 1}"}],
            mode=mode,  # type: ignore[arg-type]
            target_name=f"客户{i + 1}",
            template_name="conformance",
            touchpoint_name="tp",
        )
        for i in range(count)
    ]


def _build(
    cls: type[ChannelAdapter], config: dict[str, Any], handler: Handler | None, engine: Any
) -> tuple[ChannelAdapter, httpx.AsyncClient]:
    unexpected: Handler = lambda r: httpx.Response(599)  # noqa: E731 - a call nobody expected
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler or unexpected))
    context = AdapterContext(http=http, engine=engine, clock=ManualClock(datetime(2027, 3, 1)))
    parsed = cls.config_model.model_validate(config)
    return cls(parsed, context), http  # type: ignore[call-arg]


def _secret_fields(model: BaseModel) -> list[str]:
    found = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, SecretStr) for v in values):
            found.append(name)
    return found


@pytest.mark.parametrize("name", sorted(available_adapters()))
async def test_adapter_conformance(name: str, engine: Any) -> None:
    assert name in HARNESSES, f"adapter {name!r} is registered but has no conformance harness"
    harness = HARNESSES[name]
    cls = adapter_class(name)

    # Declaration: a name, a strict pydantic config model, sane capabilities.
    assert cls.name == name
    assert issubclass(cls.config_model, AdapterConfig)
    caps = cls.capabilities
    assert caps.modes and caps.modes <= ALL_MODES | PLATFORM_MODES
    assert caps.targets and caps.targets <= ALL_TARGETS
    assert "text" in caps.parts and caps.parts <= ALL_PARTS
    assert caps.max_batch >= 1
    # Optional operations are declared, and what is declared is implemented.
    for declared, method in (
        (caps.connection_check, "check_connection"),
        (caps.task_outcomes, "poll_task_outcomes"),
    ):
        implemented = inspect.iscoroutinefunction(getattr(cls, method, None))
        assert declared == implemented, f"{name}: {method} declared={declared}"
    with pytest.raises(ValidationError):
        cls.config_model.model_validate({**harness.config, "no_such_option": 1})

    # Secrets are SecretStr: masked in dumps, reprs and what the API shows.
    config = cls.config_model.model_validate(harness.config)
    shown = [
        json.dumps(config.model_dump(mode="json")),
        repr(config),
        str(config),
        json.dumps(channels_service.masked_config(name, harness.config)),
    ]
    for secret in harness.secrets:
        assert all(secret not in text for text in shown), f"{name} shows a secret"
    assert bool(_secret_fields(config)) == bool(harness.secrets)

    mode = next(m for m in ("send", "task", "remind") if m in caps.modes)
    batch = _messages(caps, mode, min(3, caps.max_batch))

    # Working backend: one SENT result per message, in order.
    adapter, http = _build(cls, harness.config, harness.ok, engine)
    async with http:
        assert await adapter.send([]) == []
        results = await adapter.send(batch)
        assert len(results) == len(batch)
        assert all(r.status is ResultStatus.SENT for r in results), results

        # A mode it does not declare is refused per message, not raised.
        for other in sorted(ALL_MODES - caps.modes):
            refused = await adapter.send(_messages(caps, other, 1))
            assert [r.status for r in refused] == [ResultStatus.PERMANENT]
            assert refused[0].error

    # Failing backend: failures come back as results with a readable reason.
    if harness.setup_failure:
        harness.setup_failure()
    try:
        adapter, http = _build(
            cls, {**harness.config, **harness.failing_config}, harness.failing, engine
        )
        async with http:
            results = await adapter.send(batch)
    finally:
        APPRISE_FAIL["on"] = False
    assert len(results) == len(batch)
    for result in results:
        assert result.status in (ResultStatus.RETRYABLE, ResultStatus.PERMANENT)
        assert result.error and all(secret not in result.error for secret in harness.secrets)


@pytest.mark.parametrize("name", sorted(available_adapters()))
async def test_declared_operations_are_what_callers_get(name: str, engine: Any) -> None:
    cls = adapter_class(name)
    adapter, http = _build(cls, HARNESSES[name].config, HARNESSES[name].ok, engine)
    async with http:
        checker = connection_checker(adapter)
        assert (checker is not None) == cls.capabilities.connection_check
        poller = task_poller(adapter)
        assert (poller is not None) == cls.capabilities.task_outcomes
    # The catalog the UI shows says which operations a channel has.
    caps = next(a for a in channels_service.adapter_catalog() if a["name"] == name)
    assert caps["capabilities"]["connection_check"] == cls.capabilities.connection_check
    assert caps["capabilities"]["task_outcomes"] == cls.capabilities.task_outcomes
