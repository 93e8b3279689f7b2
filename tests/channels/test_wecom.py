"""The WeCom customer-contact adapter against a fake WeCom on httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.wecom import TaskOutcome, WeComAdapter, WeComAPIError, WeComConfig
from sopbot.clock import ManualClock

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BASE = "https://qyapi.weixin.qq.com/cgi-bin"

Reply = dict[str, Any] | httpx.Response | Exception


class FakeWeCom:
    """Answers WeCom endpoints; queued replies per path win over the defaults."""

    def __init__(self) -> None:
        self.requests: dict[str, list[httpx.Request]] = {}
        self.queued: dict[str, list[Reply]] = {}
        self.tokens_issued = 0
        self.msg_counter = 0

    def queue(self, path: str, *replies: Reply) -> None:
        self.queued.setdefault(path, []).extend(replies)

    def calls(self, path: str) -> list[httpx.Request]:
        return self.requests.get(path, [])

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.calls(path)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path.startswith("/cgi-bin/")
        path = request.url.path.removeprefix("/cgi-bin/")
        self.requests.setdefault(path, []).append(request)
        if path != "gettoken":
            assert request.method == "POST"
            assert request.url.params["access_token"].startswith("tok")
        if self.queued.get(path):
            reply = self.queued[path].pop(0)
            if isinstance(reply, Exception):
                raise reply
            if isinstance(reply, httpx.Response):
                return reply
            return httpx.Response(200, json=reply)
        return httpx.Response(200, json=self.default(path, request))

    def default(self, path: str, request: httpx.Request) -> dict[str, Any]:
        if path == "gettoken":
            assert request.method == "GET"
            assert request.url.params["corpid"] == "ww_corp"
            assert request.url.params["corpsecret"] == "corp-secret"
            self.tokens_issued += 1
            return {
                "errcode": 0,
                "errmsg": "ok",
                "access_token": f"tok{self.tokens_issued}",
                "expires_in": 7200,
            }
        self.msg_counter += 1
        if path == "externalcontact/add_msg_template":
            return {
                "errcode": 0,
                "errmsg": "ok",
                "fail_list": [],
                "msgid": f"task{self.msg_counter}",
            }
        if path == "message/send":
            return {
                "errcode": 0,
                "errmsg": "ok",
                "invaliduser": "",
                "msgid": f"app{self.msg_counter}",
            }
        raise AssertionError(f"unexpected call to {path}")


def make_message(delivery_id: int = 1, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": delivery_id,
        "idempotency_key": f"d{delivery_id}",
        "target_kind": "contact",
        "target_external_id": f"wm_{delivery_id}",
        "account_external_id": "staff_li",
        "parts": [{"kind": "text", "text": "欢迎！"}],
        "mode": "task",
        "target_name": "王女士",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


@pytest.fixture
def fake() -> FakeWeCom:
    return FakeWeCom()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def adapter(fake: FakeWeCom, clock: ManualClock) -> AsyncIterator[WeComAdapter]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as client:
        context = AdapterContext(http=client, engine=None, clock=clock)  # type: ignore[arg-type]
        config = WeComConfig(corp_id="ww_corp", corp_secret="corp-secret", agent_id=1000002)
        yield WeComAdapter(config, context)


TASK = "externalcontact/add_msg_template"


async def test_25k_identical_deliveries_become_three_tasks_and_one_token(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    messages = [make_message(i) for i in range(25_000)]
    results = await adapter.send(messages)

    assert len(fake.calls("gettoken")) == 1
    bodies = fake.bodies(TASK)
    assert [len(b["external_userid"]) for b in bodies] == [10_000, 10_000, 5_000]
    assert all(b["chat_type"] == "single" and b["sender"] == "staff_li" for b in bodies)
    assert all(b["text"] == {"content": "欢迎！"} for b in bodies)
    assert [uid for b in bodies for uid in b["external_userid"]] == [
        f"wm_{i}" for i in range(25_000)
    ]
    assert {r.status for r in results} == {ResultStatus.SENT}
    assert [results[0].provider_message_id, results[10_000].provider_message_id] == [
        "task1",
        "task2",
    ]
    assert results[24_999].provider_message_id == "task3"


async def test_personalised_content_gets_one_task_per_distinct_text_and_sender(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    messages = [
        make_message(1, parts=[{"kind": "text", "text": "张三，你好"}]),
        make_message(2, parts=[{"kind": "text", "text": "李四，你好"}]),
        make_message(3, parts=[{"kind": "text", "text": "张三，你好"}]),
        make_message(4, parts=[{"kind": "text", "text": "张三，你好"}], account_external_id="zhao"),
    ]
    results = await adapter.send(messages)

    bodies = fake.bodies(TASK)
    assert [(b["sender"], b["text"]["content"], b["external_userid"]) for b in bodies] == [
        ("staff_li", "张三，你好", ["wm_1", "wm_3"]),
        ("staff_li", "李四，你好", ["wm_2"]),
        ("zhao", "张三，你好", ["wm_4"]),
    ]
    assert [r.provider_message_id for r in results] == ["task1", "task2", "task1", "task3"]


async def test_groups_use_group_chat_type_with_at_most_2000_per_task(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    groups = [
        make_message(i, target_kind="group", target_external_id=f"wr_{i}") for i in range(2_500)
    ]
    contact = make_message(9_999)  # same content, but a contact: a separate task
    results = await adapter.send([*groups, contact])

    bodies = fake.bodies(TASK)
    assert [b["chat_type"] for b in bodies] == ["group", "group", "single"]
    assert [len(b["chat_id_list"]) for b in bodies[:2]] == [2_000, 500]
    assert all("external_userid" not in b for b in bodies[:2])
    assert bodies[2]["external_userid"] == ["wm_9999"]
    assert len(results) == 2_501 and {r.status for r in results} == {ResultStatus.SENT}


async def test_expired_token_is_refreshed_once_and_the_call_retried(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    fake.queue(TASK, {"errcode": 42001, "errmsg": "access_token expired"})
    [result] = await adapter.send([make_message()])

    assert result.status is ResultStatus.SENT
    assert len(fake.calls("gettoken")) == 2
    tokens = [r.url.params["access_token"] for r in fake.calls(TASK)]
    assert tokens == ["tok1", "tok2"]


async def test_token_still_rejected_after_refresh_is_retryable(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    fake.queue(
        TASK,
        {"errcode": 40014, "errmsg": "invalid access_token"},
        {"errcode": 40014, "errmsg": "invalid access_token"},
    )
    [result] = await adapter.send([make_message()])

    assert result.status is ResultStatus.RETRYABLE
    assert "40014" in result.error
    assert len(fake.calls("gettoken")) == 2 and len(fake.calls(TASK)) == 2


async def test_token_is_cached_until_shortly_before_it_expires(
    adapter: WeComAdapter, fake: FakeWeCom, clock: ManualClock
) -> None:
    await adapter.send([make_message(1)])
    clock.advance(seconds=6_000)
    await adapter.send([make_message(2)])
    assert len(fake.calls("gettoken")) == 1
    clock.advance(seconds=1_000)  # 7,000 s: inside the safety margin of a 7,200 s token
    await adapter.send([make_message(3)])
    assert len(fake.calls("gettoken")) == 2


async def test_bad_credentials_fail_permanently(adapter: WeComAdapter, fake: FakeWeCom) -> None:
    fake.queue("gettoken", {"errcode": 40001, "errmsg": "invalid credential"})
    [result] = await adapter.send([make_message()])
    assert result.status is ResultStatus.PERMANENT
    assert "corp_secret" in result.error and "40001" in result.error
    assert fake.calls(TASK) == []


async def test_frequency_limit_is_retryable_and_stops_further_calls(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    fake.queue(TASK, {"errcode": 45009, "errmsg": "api freq out of limit"})
    results = await adapter.send(
        [
            make_message(1, parts=[{"kind": "text", "text": "A"}]),
            make_message(2, parts=[{"kind": "text", "text": "B"}]),
        ]
    )
    assert [r.status for r in results] == [ResultStatus.RETRYABLE] * 2
    assert [r.retry_after for r in results] == [60.0, 60.0]
    assert "45009" in results[0].error
    assert len(fake.calls(TASK)) == 1


@pytest.mark.parametrize(
    ("reply", "status", "error_has"),
    [
        (
            {"errcode": 41048, "errmsg": "invalid external userid"},
            ResultStatus.PERMANENT,
            "WeCom errcode 41048: invalid external userid",
        ),
        ({"errcode": -1, "errmsg": "system busy"}, ResultStatus.RETRYABLE, "errcode -1"),
        (
            {"errcode": 45033, "errmsg": "api concurrent out of limit"},
            ResultStatus.RETRYABLE,
            "45033",
        ),
        (httpx.Response(502), ResultStatus.RETRYABLE, "HTTP 502"),
        (httpx.Response(200, text="<html>"), ResultStatus.RETRYABLE, "non-JSON"),
        (httpx.ReadTimeout("slow"), ResultStatus.RETRYABLE, "timed out"),
        (httpx.ConnectError("refused"), ResultStatus.RETRYABLE, "ConnectError"),
    ],
    ids=["permanent", "busy", "concurrency", "http-502", "html", "timeout", "connect"],
)
async def test_error_mapping(
    adapter: WeComAdapter, fake: FakeWeCom, reply: Reply, status: ResultStatus, error_has: str
) -> None:
    fake.queue(TASK, reply)
    [result] = await adapter.send([make_message()])
    assert result.status is status
    assert error_has in result.error


async def test_fail_list_targets_fail_and_the_rest_are_sent(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    fake.queue(TASK, {"errcode": 0, "errmsg": "ok", "fail_list": ["wm_2"], "msgid": "m1"})
    results = await adapter.send([make_message(1), make_message(2), make_message(3)])
    assert [r.status for r in results] == [
        ResultStatus.SENT,
        ResultStatus.PERMANENT,
        ResultStatus.SENT,
    ]
    assert results[0].provider_message_id == "m1"
    assert "not a friend" in results[1].error


async def test_text_over_4000_bytes_is_permanent(adapter: WeComAdapter, fake: FakeWeCom) -> None:
    results = await adapter.send(
        [
            make_message(1, parts=[{"kind": "text", "text": "好" * 1_334}]),  # 4,002 bytes
            make_message(2, parts=[{"kind": "text", "text": "好" * 1_333}]),  # 3,999 bytes
        ]
    )
    assert results[0].status is ResultStatus.PERMANENT
    assert "4002 bytes" in results[0].error and "4000" in results[0].error
    assert results[1].status is ResultStatus.SENT
    assert len(fake.calls(TASK)) == 1


async def test_attachments_map_to_wecom_shapes(adapter: WeComAdapter, fake: FakeWeCom) -> None:
    parts = [
        {"kind": "text", "text": "第一行"},
        {"kind": "text", "text": "第二行"},
        {"kind": "image", "url": "https://wework.qpic.cn/menu.png"},
        {
            "kind": "link",
            "title": "问卷",
            "url": "https://example.com/q",
            "description": "两分钟",
            "image_url": "https://example.com/q.png",
        },
        {
            "kind": "miniprogram",
            "appid": "wx123",
            "page": "pages/coupon",
            "title": "领券",
            "media_id": "M1",
        },
        {"kind": "file", "url": "https://example.com/a.pdf", "name": "a.pdf", "media_id": "F1"},
    ]
    [result] = await adapter.send([make_message(parts=parts)])

    assert result.status is ResultStatus.SENT
    [body] = fake.bodies(TASK)
    assert body["text"] == {"content": "第一行\n第二行"}
    assert body["attachments"] == [
        {"msgtype": "image", "image": {"pic_url": "https://wework.qpic.cn/menu.png"}},
        {
            "msgtype": "link",
            "link": {
                "title": "问卷",
                "url": "https://example.com/q",
                "picurl": "https://example.com/q.png",
                "desc": "两分钟",
            },
        },
        {
            "msgtype": "miniprogram",
            "miniprogram": {
                "title": "领券",
                "pic_media_id": "M1",
                "appid": "wx123",
                "page": "pages/coupon",
            },
        },
        {"msgtype": "file", "file": {"media_id": "F1"}},
    ]


@pytest.mark.parametrize(
    ("parts", "error_has"),
    [
        # covers and files by web address are uploaded first (test_wecom_media.py)
        ([{"kind": "file", "url": "ftp://example.com/a.pdf", "name": "a.pdf"}], "web address"),
        (
            [{"kind": "miniprogram", "appid": "wx1", "page": "p", "title": "t"}],
            "media_id",
        ),
        (
            [{"kind": "image", "url": f"https://example.com/{i}.png"} for i in range(10)],
            "at most 9",
        ),
        ([{"kind": "video", "url": "https://example.com/v.mp4"}], "videos need a media_id"),
        ([], "empty"),
    ],
    ids=["file-url-only", "miniprogram-no-media", "ten-attachments", "video", "empty"],
)
async def test_content_wecom_cannot_send_is_permanent(
    adapter: WeComAdapter, fake: FakeWeCom, parts: list[dict[str, Any]], error_has: str
) -> None:
    [result] = await adapter.send([make_message(parts=parts)])
    assert result.status is ResultStatus.PERMANENT
    assert error_has in result.error
    assert fake.requests == {}


async def test_remind_mode_sends_an_app_message_to_the_staff_member(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    message = make_message(
        5,
        mode="remind",
        parts=[
            {"kind": "text", "text": "今晚 20:00 上课"},
            {"kind": "link", "title": "课程链接", "url": "https://example.com/c"},
        ],
    )
    [result] = await adapter.send([message])

    assert result.status is ResultStatus.SENT
    assert result.provider_message_id == "app1"
    assert fake.calls(TASK) == []
    [body] = fake.bodies("message/send")
    assert body["touser"] == "staff_li"
    assert body["agentid"] == 1000002
    assert body["msgtype"] == "text"
    assert body["text"]["content"] == (
        "请发送给 王女士（wm_5）：\n今晚 20:00 上课\n[链接] 课程链接 https://example.com/c"
    )


async def test_remind_to_an_account_the_app_cannot_see_is_permanent(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    fake.queue(
        "message/send", {"errcode": 0, "errmsg": "ok", "invaliduser": "staff_li", "msgid": "x"}
    )
    [result] = await adapter.send([make_message(mode="remind")])
    assert result.status is ResultStatus.PERMANENT
    assert "staff_li" in result.error


async def test_send_mode_is_permanent_and_points_to_task_or_remind(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    results = await adapter.send([make_message(1, mode="send"), make_message(2)])
    assert results[0].status is ResultStatus.PERMANENT
    assert "task" in results[0].error and "remind" in results[0].error
    assert results[1].status is ResultStatus.SENT
    assert [b["external_userid"] for b in fake.bodies(TASK)] == [["wm_2"]]


async def test_poll_task_follows_cursor_and_maps_statuses(
    adapter: WeComAdapter, fake: FakeWeCom
) -> None:
    path = "externalcontact/get_groupmsg_send_result"
    fake.queue(
        path,
        {
            "errcode": 0,
            "errmsg": "ok",
            "next_cursor": "page2",
            "send_list": [
                {"external_userid": "wm_1", "userid": "staff_li", "status": 0},
                {
                    "external_userid": "wm_2",
                    "userid": "staff_li",
                    "status": 1,
                    "send_time": 1740830400,
                },
            ],
        },
        {
            "errcode": 0,
            "errmsg": "ok",
            "next_cursor": "",
            "send_list": [
                {"external_userid": "wm_3", "userid": "staff_li", "status": 2},
                {"chat_id": "wr_4", "userid": "staff_li", "status": 3},
            ],
        },
    )
    statuses = await adapter.poll_task("task1", "staff_li")

    # status 3 (quota used) is a skip by WeCom's rule, not a failure
    assert statuses == {"wm_1": "pending", "wm_2": "sent", "wm_3": "failed", "wr_4": "skipped"}
    first, second = fake.bodies(path)
    assert first == {"msgid": "task1", "userid": "staff_li", "limit": 1000}
    assert second["cursor"] == "page2"


async def test_poll_task_outcomes_explain_failures(adapter: WeComAdapter, fake: FakeWeCom) -> None:
    fake.queue(
        "externalcontact/get_groupmsg_send_result",
        {
            "errcode": 0,
            "errmsg": "ok",
            "send_list": [
                {"external_userid": "wm_2", "status": 1, "send_time": 1740830400},
                {"external_userid": "wm_3", "status": 2},
                {"external_userid": "wm_4", "status": 3},
            ],
        },
    )
    outcomes = await adapter.poll_task_outcomes("task1", "staff_li")
    assert outcomes["wm_2"] == TaskOutcome("sent", None, 1740830400)
    assert "not a friend" in outcomes["wm_3"].reason
    assert outcomes["wm_4"].status == "skipped"
    assert "already received a mass message" in outcomes["wm_4"].reason


async def test_poll_task_raises_when_wecom_refuses(adapter: WeComAdapter, fake: FakeWeCom) -> None:
    fake.queue(
        "externalcontact/get_groupmsg_send_result", {"errcode": 41063, "errmsg": "msg not found"}
    )
    with pytest.raises(WeComAPIError) as exc_info:
        await adapter.poll_task("nope", "staff_li")
    assert not exc_info.value.retryable
    assert "41063" in str(exc_info.value)


def test_capabilities() -> None:
    caps = WeComAdapter.capabilities
    assert caps.modes == {"task", "remind", "welcome", "moment"}
    assert caps.targets == {"contact", "group"}
    assert not caps.idempotent
    assert caps.max_batch == 10_000


GOOD: dict[str, Any] = {"corp_id": "ww_corp", "corp_secret": "corp-secret"}

# Config table, in the spirit of apprise's URL tester: (config, field named in the error).
CONFIG_CASES: list[tuple[dict[str, Any], str | None]] = [
    (GOOD, None),
    ({**GOOD, "agent_id": 1000002, "base_url": "http://wecom-proxy.internal/cgi-bin"}, None),
    ({"corp_id": "ww_corp"}, "corp_secret"),
    ({**GOOD, "corp_secret": ""}, "corp_secret"),
    ({"corp_secret": "corp-secret"}, "corp_id"),
    ({**GOOD, "corp_id": ""}, "corp_id"),
    ({**GOOD, "agent_id": "app"}, "agent_id"),
    ({**GOOD, "base_url": "qyapi.weixin.qq.com"}, "base_url"),
    ({**GOOD, "timeout_s": -1}, "timeout_s"),
    ({**GOOD, "secret": "x"}, "secret"),
]


@pytest.mark.parametrize(("config", "bad_field"), CONFIG_CASES)
def test_config_validation(config: dict[str, Any], bad_field: str | None) -> None:
    if bad_field is None:
        WeComConfig(**config)
        return
    with pytest.raises(ValidationError) as exc_info:
        WeComConfig(**config)
    assert bad_field in {str(loc) for e in exc_info.value.errors() for loc in e["loc"]}


async def test_custom_base_url_is_used(fake: FakeWeCom, clock: ManualClock) -> None:
    seen_hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_hosts.append(request.url.host)
        return fake(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        adapter = WeComAdapter(
            WeComConfig(**GOOD, base_url="https://wecom-proxy.internal/cgi-bin/"),
            AdapterContext(http=client, engine=None, clock=clock),  # type: ignore[arg-type]
        )
        [result] = await adapter.send([make_message()])
    assert result.status is ResultStatus.SENT
    assert seen_hosts == ["wecom-proxy.internal", "wecom-proxy.internal"]


def test_secret_is_not_shown_in_repr() -> None:
    assert "corp-secret" not in repr(WeComConfig(**GOOD))
