"""The signed webhook adapter, driven through httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.webhook import WebhookAdapter, WebhookConfig, verify_signature
from sopbot.clock import ManualClock

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://hooks.example.com/sopbot"
SECRET = "s3cret"

Handler = Callable[[httpx.Request], Any]


def make_message(delivery_id: int = 1, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": delivery_id,
        "idempotency_key": f"d{delivery_id}",
        "target_kind": "contact",
        "target_external_id": f"wm_{delivery_id}",
        "account_external_id": "staff_li",
        "parts": [{"kind": "text", "text": "欢迎加入！"}],
        "target_name": "王女士",
        "template_name": "新好友欢迎",
        "touchpoint_name": "day0",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


@pytest.fixture
async def make_adapter() -> AsyncIterator[Callable[..., WebhookAdapter]]:
    clients: list[httpx.AsyncClient] = []

    def build(handler: Handler, **config: Any) -> WebhookAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        context = AdapterContext(http=client, engine=None, clock=ManualClock(START))  # type: ignore[arg-type]
        return WebhookAdapter(WebhookConfig(**{"url": URL, **config}), context)

    yield build
    for client in clients:
        await client.aclose()


async def test_posts_signed_compact_json_with_idempotency_key(make_adapter) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "rcv-1"})

    adapter = make_adapter(handler, secret=SECRET, headers={"Authorization": "Bearer t"})
    [result] = await adapter.send([make_message(7)])

    assert result.status is ResultStatus.SENT
    assert result.provider_message_id == "rcv-1"
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["Idempotency-Key"] == "d7"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer t"
    timestamp = request.headers["X-Sopbot-Timestamp"]
    assert timestamp == str(int(START.timestamp()))
    assert verify_signature(
        SECRET, timestamp, request.content, request.headers["X-Sopbot-Signature"]
    )
    # Compact UTF-8, not \u escapes.
    assert "欢迎加入！".encode() in request.content
    assert b", " not in request.content and b": " not in request.content
    assert json.loads(request.content) == {
        "delivery_id": 7,
        "idempotency_key": "d7",
        "target": {"kind": "contact", "external_id": "wm_7", "name": "王女士"},
        "account": "staff_li",
        "mode": "send",
        "template": "新好友欢迎",
        "touchpoint": "day0",
        "parts": [{"kind": "text", "text": "欢迎加入！"}],
    }


async def test_signature_fails_for_tampered_body_wrong_secret_or_timestamp(make_adapter) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    await make_adapter(handler, secret=SECRET).send([make_message()])
    [request] = seen
    timestamp = request.headers["X-Sopbot-Timestamp"]
    header = request.headers["X-Sopbot-Signature"]
    assert header.startswith("sha256=")
    assert verify_signature(SECRET, int(timestamp), request.content, header)
    assert not verify_signature(SECRET, timestamp, request.content + b" ", header)
    assert not verify_signature("other", timestamp, request.content, header)
    assert not verify_signature(SECRET, int(timestamp) + 1, request.content, header)


async def test_no_secret_means_no_signature_header(make_adapter) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    await make_adapter(handler).send([make_message()])
    assert "X-Sopbot-Signature" not in seen[0].headers
    assert seen[0].headers["Idempotency-Key"] == "d1"


async def test_static_headers_cannot_replace_the_idempotency_key(make_adapter) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    adapter = make_adapter(handler, headers={"Idempotency-Key": "static", "X-Env": "prod"})
    await adapter.send([make_message(3)])
    assert seen[0].headers["Idempotency-Key"] == "d3"
    assert seen[0].headers["X-Env"] == "prod"


RETRY_DATE = format_datetime(START + timedelta(seconds=120), usegmt=True)


@pytest.mark.parametrize(
    ("response", "status", "provider_id", "retry_after", "error_has"),
    [
        (httpx.Response(200, json={"id": "abc"}), ResultStatus.SENT, "abc", None, None),
        (httpx.Response(202, json={"message_id": 42}), ResultStatus.SENT, "42", None, None),
        (
            httpx.Response(201, headers={"X-Message-Id": "hdr-1"}, text="ok"),
            ResultStatus.SENT,
            "hdr-1",
            None,
            None,
        ),
        (httpx.Response(204), ResultStatus.SENT, None, None, None),
        (
            httpx.Response(429, headers={"Retry-After": "30"}),
            ResultStatus.RETRYABLE,
            None,
            30.0,
            "429",
        ),
        (
            httpx.Response(503, headers={"Retry-After": RETRY_DATE}),
            ResultStatus.RETRYABLE,
            None,
            120.0,
            "503",
        ),
        (httpx.Response(500, text="boom"), ResultStatus.RETRYABLE, None, None, "500: boom"),
        (
            httpx.Response(400, json={"error": "unknown target wm_1"}),
            ResultStatus.PERMANENT,
            None,
            None,
            "unknown target wm_1",
        ),
        (httpx.Response(404), ResultStatus.PERMANENT, None, None, "HTTP 404"),
    ],
    ids=["200-id", "202-message_id", "201-header", "204", "429", "503-date", "500", "400", "404"],
)
async def test_http_status_mapping(
    make_adapter, response, status, provider_id, retry_after, error_has
) -> None:
    [result] = await make_adapter(lambda request: response).send([make_message()])
    assert result.status is status
    assert result.provider_message_id == provider_id
    assert result.retry_after == retry_after
    if error_has is not None:
        assert error_has in result.error


def test_long_error_bodies_are_trimmed_to_a_snippet() -> None:
    adapter = WebhookAdapter(
        WebhookConfig(url=URL),
        AdapterContext(http=None, engine=None, clock=ManualClock(START)),  # type: ignore[arg-type]
    )
    result = adapter._result_for(httpx.Response(422, text="x" * 5000))
    assert result.status is ResultStatus.PERMANENT
    assert len(result.error) < 300


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")],
    ids=["read-timeout", "connect-timeout", "connect-error"],
)
async def test_timeouts_and_connection_errors_are_retryable(make_adapter, exc) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    [result] = await make_adapter(handler).send([make_message()])
    assert result.status is ResultStatus.RETRYABLE


async def test_unsupported_part_or_mode_is_permanent_without_a_request(make_adapter) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200)

    results = await make_adapter(handler).send(
        [
            make_message(1, parts=[{"kind": "video", "url": "https://v"}]),
            make_message(2, mode="task"),
            make_message(3),
        ]
    )
    assert [r.status for r in results] == [
        ResultStatus.PERMANENT,
        ResultStatus.PERMANENT,
        ResultStatus.SENT,
    ]
    assert "video" in results[0].error
    assert "task" in results[1].error
    assert calls == 1


async def test_concurrency_is_bounded_and_results_keep_message_order(make_adapter) -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        delivery_id = json.loads(request.content)["delivery_id"]
        # Later messages finish first: yield to the loop a decreasing number of times.
        for _ in range(20 - delivery_id):
            await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200, json={"id": f"r{delivery_id}"})

    adapter = make_adapter(handler, max_concurrency=3)
    results = await adapter.send([make_message(i) for i in range(10)])

    assert peak == 3
    assert [r.provider_message_id for r in results] == [f"r{i}" for i in range(10)]


async def test_unexpected_error_stays_inside_its_own_result(make_adapter) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["delivery_id"] == 1:
            raise RuntimeError("receiver exploded")
        return httpx.Response(200)

    results = await make_adapter(handler).send([make_message(1), make_message(2)])
    assert results[0].status is ResultStatus.PERMANENT
    assert "receiver exploded" in results[0].error
    assert results[1].status is ResultStatus.SENT


# Config table, in the spirit of apprise's URL tester: (config, field named in the error).
CONFIG_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"url": URL}, None),
    ({"url": URL, "secret": SECRET, "timeout_s": 2.5, "max_concurrency": 4}, None),
    ({"url": URL, "headers": {"X-Team": "ops"}}, None),
    ({}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "ftp://hooks.example.com/x"}, "url"),
    ({"url": URL, "timeout_s": 0}, "timeout_s"),
    ({"url": URL, "max_concurrency": 0}, "max_concurrency"),
    ({"url": URL, "secret": None, "headers": {"X-Count": 1}}, "headers"),
    ({"url": URL, "sekret": SECRET}, "sekret"),
]


@pytest.mark.parametrize(("config", "bad_field"), CONFIG_CASES)
def test_config_validation(config: dict[str, Any], bad_field: str | None) -> None:
    if bad_field is None:
        WebhookConfig(**config)
        return
    with pytest.raises(ValidationError) as exc_info:
        WebhookConfig(**config)
    assert bad_field in {str(loc) for e in exc_info.value.errors() for loc in e["loc"]}


def test_secret_is_not_shown_in_repr() -> None:
    config = WebhookConfig(url=URL, secret=SECRET)
    assert SECRET not in repr(config)
