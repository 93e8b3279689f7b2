"""The WeCom group robot adapter against httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.wecom_group_bot import WeComGroupBotAdapter, WeComGroupBotConfig
from sopbot.clock import ManualClock

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
WEBHOOK_URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"

Handler = Callable[[httpx.Request], httpx.Response]


def make_message(delivery_id: int = 1, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": delivery_id,
        "idempotency_key": f"d{delivery_id}",
        "target_kind": "group",
        "target_external_id": "wr_ops",
        "account_external_id": None,
        "parts": [{"kind": "text", "text": "今日午餐菜单"}],
        "target_name": "门店运营群",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})


class Recorder:
    """Records requests and replies with queued WeCom answers, then ``ok``."""

    def __init__(self, *replies: dict[str, Any] | httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.method == "POST"
        if not self.replies:
            return ok(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply)


@pytest.fixture
async def make_adapter() -> AsyncIterator[Callable[..., WeComGroupBotAdapter]]:
    clients: list[httpx.AsyncClient] = []

    def build(handler: Handler, **config: Any) -> WeComGroupBotAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        context = AdapterContext(http=client, engine=None, clock=ManualClock(START))  # type: ignore[arg-type]
        return WeComGroupBotAdapter(
            WeComGroupBotConfig(**(config or {"webhook_url": WEBHOOK_URL})), context
        )

    yield build
    for client in clients:
        await client.aclose()


async def test_text_is_posted_to_the_webhook(make_adapter) -> None:
    bot = Recorder()
    [result] = await make_adapter(bot).send(
        [
            make_message(
                parts=[{"kind": "text", "text": "11:00"}, {"kind": "text", "text": "红烧肉"}]
            )
        ]
    )
    assert result.status is ResultStatus.SENT
    [request] = bot.requests
    assert str(request.url) == WEBHOOK_URL
    assert bot.payloads == [{"msgtype": "text", "text": {"content": "11:00\n红烧肉"}}]


async def test_key_and_base_url_build_the_webhook(make_adapter) -> None:
    bot = Recorder()
    await make_adapter(bot, key=KEY, base_url="https://bots.internal/webhook/send").send(
        [make_message()]
    )
    assert bot.requests[0].url.host == "bots.internal"
    assert bot.requests[0].url.params["key"] == KEY


async def test_links_and_images_become_one_news_message(make_adapter) -> None:
    bot = Recorder()
    parts = [
        {
            "kind": "link",
            "title": "本周菜单",
            "url": "https://example.com/menu",
            "description": "点击查看",
            "image_url": "https://example.com/menu.png",
        },
        {"kind": "image", "url": "https://example.com/dish.jpg"},
    ]
    [result] = await make_adapter(bot).send([make_message(parts=parts)])

    assert result.status is ResultStatus.SENT
    assert bot.payloads == [
        {
            "msgtype": "news",
            "news": {
                "articles": [
                    {
                        "title": "本周菜单",
                        "url": "https://example.com/menu",
                        "description": "点击查看",
                        "picurl": "https://example.com/menu.png",
                    },
                    {
                        "title": "图片",
                        "url": "https://example.com/dish.jpg",
                        "picurl": "https://example.com/dish.jpg",
                    },
                ]
            },
        }
    ]


async def test_text_and_link_are_two_bot_messages(make_adapter) -> None:
    bot = Recorder()
    parts = [
        {"kind": "link", "title": "菜单", "url": "https://example.com/m"},
        {"kind": "text", "text": "今日特价"},
    ]
    [result] = await make_adapter(bot).send([make_message(parts=parts)])
    assert result.status is ResultStatus.SENT
    assert [p["msgtype"] for p in bot.payloads] == ["text", "news"]


async def test_more_than_eight_articles_are_split(make_adapter) -> None:
    bot = Recorder()
    parts = [{"kind": "image", "url": f"https://example.com/{i}.jpg"} for i in range(10)]
    await make_adapter(bot).send([make_message(parts=parts)])
    assert [len(p["news"]["articles"]) for p in bot.payloads] == [8, 2]


@pytest.mark.parametrize(
    ("reply", "status", "retry_after", "error_has"),
    [
        ({"errcode": 0, "errmsg": "ok"}, ResultStatus.SENT, None, None),
        (
            {"errcode": 45009, "errmsg": "api freq out of limit"},
            ResultStatus.RETRYABLE,
            60.0,
            "45009",
        ),
        ({"errcode": -1, "errmsg": "system busy"}, ResultStatus.RETRYABLE, None, "errcode -1"),
        (
            {"errcode": 93000, "errmsg": "invalid webhook url"},
            ResultStatus.PERMANENT,
            None,
            "WeCom errcode 93000: invalid webhook url",
        ),
        (httpx.Response(502), ResultStatus.RETRYABLE, None, "HTTP 502"),
        (httpx.Response(404), ResultStatus.PERMANENT, None, "HTTP 404"),
        (httpx.ReadTimeout("slow"), ResultStatus.RETRYABLE, None, "timed out"),
        (httpx.ConnectError("refused"), ResultStatus.RETRYABLE, None, "ConnectError"),
    ],
    ids=["ok", "rate-limit", "busy", "invalid-key", "http-502", "http-404", "timeout", "connect"],
)
async def test_errcode_mapping(make_adapter, reply, status, retry_after, error_has) -> None:
    [result] = await make_adapter(Recorder(reply)).send([make_message()])
    assert result.status is status
    assert result.retry_after == retry_after
    if error_has is not None:
        assert error_has in result.error


async def test_rate_limit_makes_the_rest_of_the_batch_retryable_without_calls(
    make_adapter,
) -> None:
    bot = Recorder({"errcode": 0, "errmsg": "ok"}, {"errcode": 45009, "errmsg": "freq limit"})
    results = await make_adapter(bot).send([make_message(i) for i in range(4)])
    assert [r.status for r in results] == [ResultStatus.SENT] + [ResultStatus.RETRYABLE] * 3
    assert {r.retry_after for r in results[1:]} == {60.0}
    assert len(bot.requests) == 2


async def test_failure_after_a_partial_post_says_what_already_went_out(make_adapter) -> None:
    bot = Recorder({"errcode": 0, "errmsg": "ok"}, {"errcode": 45009, "errmsg": "freq limit"})
    parts = [{"kind": "text", "text": "hi"}, {"kind": "link", "title": "t", "url": "https://x"}]
    [result] = await make_adapter(bot).send([make_message(parts=parts)])
    assert result.status is ResultStatus.RETRYABLE
    assert "1 of 2" in result.error


@pytest.mark.parametrize(
    ("overrides", "error_has"),
    [
        ({"target_kind": "contact", "target_external_id": "wm_1"}, "group chat"),
        ({"mode": "task"}, "'task'"),
        (
            {"parts": [{"kind": "miniprogram", "appid": "wx1", "page": "p", "title": "t"}]},
            "miniprogram",
        ),
        ({"parts": [{"kind": "file", "url": "https://x/a.pdf"}]}, "file"),
        ({"parts": [{"kind": "text", "text": "长" * 683}]}, "2049 bytes"),
        ({"parts": []}, "empty"),
    ],
    ids=["contact", "task-mode", "miniprogram", "file", "text-too-long", "empty"],
)
async def test_what_a_group_bot_cannot_do_is_permanent(make_adapter, overrides, error_has) -> None:
    bot = Recorder()
    [result] = await make_adapter(bot).send([make_message(**overrides)])
    assert result.status is ResultStatus.PERMANENT
    assert error_has in result.error
    assert bot.requests == []


async def test_text_of_exactly_2048_bytes_is_sent(make_adapter) -> None:
    bot = Recorder()
    [result] = await make_adapter(bot).send(
        [make_message(parts=[{"kind": "text", "text": "长" * 682 + "ab"}])]
    )
    assert result.status is ResultStatus.SENT
    assert len(bot.payloads[0]["text"]["content"].encode()) == 2048


def test_capabilities() -> None:
    caps = WeComGroupBotAdapter.capabilities
    assert caps.targets == {"group"}
    assert caps.parts == {"text", "image", "link"}
    assert caps.modes == {"send"}


# Config table, in the spirit of apprise's URL tester: (config, text naming the problem).
CONFIG_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"webhook_url": WEBHOOK_URL}, None),
    ({"key": KEY}, None),
    ({"key": KEY, "base_url": "https://bots.internal/webhook/send", "timeout_s": 3}, None),
    ({}, "webhook_url"),
    ({"webhook_url": WEBHOOK_URL, "key": KEY}, "webhook_url"),
    ({"webhook_url": "not a url"}, "webhook_url"),
    ({"webhook_url": "ftp://qyapi.weixin.qq.com/x?key=1"}, "webhook_url"),
    ({"webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"}, "webhook_url"),
    ({"key": KEY, "base_url": "nope"}, "base_url"),
    ({"key": KEY, "timeout_s": 0}, "timeout_s"),
]


@pytest.mark.parametrize(("config", "named"), CONFIG_CASES)
def test_config_validation(config: dict[str, Any], named: str | None) -> None:
    if named is None:
        WeComGroupBotConfig(**config)
        return
    with pytest.raises(ValidationError) as exc_info:
        WeComGroupBotConfig(**config)
    assert named in str(exc_info.value)


def test_webhook_key_is_not_shown_in_repr() -> None:
    assert KEY not in repr(WeComGroupBotConfig(webhook_url=WEBHOOK_URL))
    assert KEY not in repr(WeComGroupBotConfig(key=KEY))
