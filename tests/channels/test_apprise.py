"""The apprise adapter: a table of cases against an in-process apprise plugin,
and apprise's own json:// service against a local fake HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from sopbot.clock import ManualClock

apprise = pytest.importorskip("apprise")
from channels.apprise_adapter import AppriseAdapter, AppriseConfig, _fill, render_body  # noqa: E402

RECEIVED: list[dict[str, Any]] = []
FAIL_HOSTS: set[str] = set()


@apprise.decorators.notify(on="sopbottest")
def _fake_service(
    body: str, title: str, notify_type: str, meta: dict, *args: Any, **kw: Any
) -> bool:
    RECEIVED.append(
        {"body": body, "title": title, "host": meta.get("host"), "path": meta.get("fullpath")}
    )
    return meta.get("host") not in FAIL_HOSTS


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    RECEIVED.clear()
    FAIL_HOSTS.clear()
    yield
    RECEIVED.clear()
    FAIL_HOSTS.clear()


def message(parts: list[dict[str, Any]] | None = None, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 1,
        "idempotency_key": "sopbot-d1",
        "target_kind": "contact",
        "target_external_id": "wm_1",
        "account_external_id": "staff_li",
        "parts": parts or [{"kind": "text", "text": "你好"}],
        "template_name": "新好友 SOP",
        "touchpoint_name": "welcome",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


def adapter(**config: Any) -> AppriseAdapter:
    context = AdapterContext(
        http=httpx.AsyncClient(),
        engine=None,
        clock=ManualClock(datetime(2027, 3, 1, tzinfo=UTC)),  # type: ignore[arg-type]
    )
    return AppriseAdapter(AppriseConfig.model_validate(config), context)


LINK = {"kind": "link", "title": "问卷", "url": "https://example.com/q", "description": "两分钟"}
IMAGE = {"kind": "image", "url": "https://example.com/menu.png"}
FILE = {"kind": "file", "url": "https://example.com/a.pdf", "name": "课表"}


@pytest.mark.parametrize(
    ("parts", "body_format", "expected"),
    [
        ([{"kind": "text", "text": "你好"}], "text", "你好"),
        (
            [{"kind": "text", "text": "看看"}, LINK],
            "text",
            "看看\n问卷 https://example.com/q\n两分钟",
        ),
        ([LINK], "markdown", "[问卷](https://example.com/q)\n两分钟"),
        ([IMAGE], "markdown", "![](https://example.com/menu.png)"),
        ([FILE], "text", "课表 https://example.com/a.pdf"),
    ],
)
def test_body_rendering(parts, body_format, expected):
    assert render_body(parts, body_format) == expected


async def test_target_and_title_placeholders_are_filled_per_delivery():
    sender = adapter(
        urls=["sopbottest://{target}/via/{account}"], title="{template} · {touchpoint}"
    )
    results = await sender.send([message(target_external_id="wm_1")])
    assert results[0].status is ResultStatus.SENT
    (got,) = RECEIVED
    assert (got["host"], got["path"]) == ("wm_1", "/via/staff_li")
    assert got["title"] == "新好友 SOP · welcome"
    assert got["body"] == "你好"


async def test_a_failing_service_is_retryable_and_names_the_service_not_the_url():
    FAIL_HOSTS.add("down")
    sender = adapter(urls=["sopbottest://down/secret-token"])
    (result,) = await sender.send([message()])
    assert result.status is ResultStatus.RETRYABLE
    assert "sopbottest" in result.error and "secret-token" not in result.error


async def test_several_urls_partial_success_counts_as_sent_to_avoid_repeats():
    FAIL_HOSTS.add("down")
    sender = adapter(urls=["sopbottest://up", "sopbottest://down"])
    (result,) = await sender.send([message()])
    assert result.status is ResultStatus.SENT
    assert sorted(r["host"] for r in RECEIVED) == ["down", "up"]


async def test_unsupported_mode_and_part_are_permanent():
    sender = adapter(urls=["sopbottest://up"])
    task, card = await sender.send(
        [
            message(mode="task"),
            message(parts=[{"kind": "miniprogram", "appid": "wx1", "page": "p", "title": "t"}]),
        ]
    )
    assert task.status is ResultStatus.PERMANENT and "only supports mode 'send'" in task.error
    assert card.status is ResultStatus.PERMANENT and "miniprogram" in card.error
    assert RECEIVED == []


def test_placeholders_are_url_quoted():
    assert _fill("tgram://bot/{target}", {"target": "a b/c?d"}) == "tgram://bot/a%20b%2Fc%3Fd"


def test_unknown_url_is_a_config_error_that_does_not_echo_the_secret():
    with pytest.raises(ValidationError) as err:
        AppriseConfig.model_validate({"urls": ["nosuchservice://my-secret-token"]})
    text = str(err.value)
    assert "apprise does not recognise" in text and "nosuchservice://" in text
    assert "my-secret-token" not in text


async def test_check_connection_parses_urls_without_sending():
    detail = await adapter(urls=["sopbottest://{target}"]).check_connection()
    assert detail.startswith("apprise reaches 1 service(s)") and RECEIVED == []


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


async def test_apprise_json_service_against_a_local_server(receiver):
    address, handler = receiver
    sender = adapter(urls=[f"json://{address}/hook"], title="SOP")
    (ok,) = await sender.send([message(parts=[{"kind": "text", "text": "菜单来了"}])])
    assert ok.status is ResultStatus.SENT
    assert handler.bodies[0]["message"] == "菜单来了" and handler.bodies[0]["title"] == "SOP"

    handler.status = 500
    (failed,) = await sender.send([message()])
    assert failed.status is ResultStatus.RETRYABLE
    assert failed.error.startswith("apprise: JSON notification failure")
