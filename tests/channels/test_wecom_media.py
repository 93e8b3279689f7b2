"""Mini-program covers and files from the material library reach WeCom as its
own temporary media: fetched from their (signed) address, uploaded with
media/upload, reused while valid, uploaded again before WeCom forgets them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from wecom_kit import CONFIG

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.wecom import WeComAdapter, WeComConfig
from channels.wecom_fake import FakeWeCom

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
SITE = "https://sop.example.com"
COVER = f"{SITE}/materials/s/7.20270401.abc/cover.png"
PDF = f"{SITE}/materials/s/8.20270401.def/menu.pdf"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 200


class Router(httpx.AsyncBaseTransport):
    """WeCom's API to the fake; sopbot's public material addresses to a stub."""

    def __init__(self, fake: FakeWeCom, files: dict[str, tuple[int, bytes]]) -> None:
        self.wecom = fake.transport()
        self.files = files
        self.fetched: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "sop.example.com":
            self.fetched.append(str(request.url))
            status, body = self.files.get(str(request.url), (404, b""))
            return httpx.Response(status, content=body)
        return await self.wecom.handle_async_request(request)


@pytest.fixture
def fake(clock) -> FakeWeCom:
    clock.set(T0)
    fake = FakeWeCom(clock)
    fake.add_contact("staff_li", "wm_1")
    return fake


def _adapter(http: httpx.AsyncClient, clock: Any) -> WeComAdapter:
    context = AdapterContext(http=http, engine=None, clock=clock)  # type: ignore[arg-type]
    return WeComAdapter(WeComConfig.model_validate(CONFIG), context)


def _message(n: int, *parts: dict[str, Any]) -> OutboundMessage:
    return OutboundMessage(n, f"d{n}", "contact", "wm_1", "staff_li", list(parts), mode="task")


CARD = {
    "kind": "miniprogram",
    "appid": "wx1234567890abcdef",
    "page": "pages/index",
    "title": "商城",
    "pic_url": COVER,
}
FILE = {"kind": "file", "url": PDF, "name": "菜单.pdf"}


async def test_a_card_cover_and_a_file_are_uploaded_once_and_reused_while_valid(clock, fake):
    router = Router(fake, {COVER: (200, PNG), PDF: (200, b"%PDF-1.7 menu")})
    async with httpx.AsyncClient(transport=router) as http:
        adapter = _adapter(http, clock)
        [first] = await adapter.send([_message(1, {"kind": "text", "text": "午餐"}, CARD, FILE)])
        assert first.status is ResultStatus.SENT, first.error
        task = fake.tasks[first.provider_message_id]
        kinds = {a["msgtype"]: a for a in task.content["attachments"]}
        cover_id = kinds["miniprogram"]["miniprogram"]["pic_media_id"]
        file_id = kinds["file"]["file"]["media_id"]
        assert fake.media[cover_id][:3] == ("image", "cover.png", PNG)
        assert fake.media[file_id][:2] == ("file", "菜单.pdf")

        clock.advance(days=2)  # still comfortably valid: reused
        [second] = await adapter.send([_message(2, CARD)])
        assert second.status is ResultStatus.SENT
        assert fake.calls["media/upload"] == 2 and len(router.fetched) == 2

        clock.advance(days=1)  # WeCom forgets media after 3 days: uploaded again
        [third] = await adapter.send([_message(3, CARD)])
        assert third.status is ResultStatus.SENT, third.error
        assert fake.calls["media/upload"] == 3


async def test_the_fake_refuses_media_it_forgot(clock, fake):
    router = Router(fake, {COVER: (200, PNG)})
    async with httpx.AsyncClient(transport=router) as http:
        adapter = _adapter(http, clock)
        [sent] = await adapter.send([_message(1, CARD)])
        media_id = fake.tasks[sent.provider_message_id].content["attachments"][0]["miniprogram"][
            "pic_media_id"
        ]
        clock.advance(days=3, minutes=1)
        stale = {**CARD, "media_id": media_id}  # a renderer that kept an old id
        [refused] = await adapter.send([_message(2, stale)])
    assert refused.status is ResultStatus.PERMANENT and "40007" in (refused.error or "")


async def test_an_address_that_cannot_be_fetched_fails_with_the_reason(clock, fake):
    router = Router(fake, {COVER: (503, b"")})
    async with httpx.AsyncClient(transport=router) as http:
        adapter = _adapter(http, clock)
        missing, busy = await adapter.send(
            [_message(1, {**CARD, "pic_url": f"{SITE}/gone.png"}), _message(2, CARD)]
        )
    assert missing.status is ResultStatus.PERMANENT and "HTTP 404" in (missing.error or "")
    assert busy.status is ResultStatus.RETRYABLE and "HTTP 503" in (busy.error or "")
    assert not fake.tasks and fake.calls["media/upload"] == 0


async def test_a_file_over_wecoms_limit_is_refused_before_uploading(clock, fake):
    big = b"x" * (20 * 1024 * 1024 + 1)
    router = Router(fake, {PDF: (200, big)})
    async with httpx.AsyncClient(transport=router) as http:
        adapter = _adapter(http, clock)
        [refused] = await adapter.send([_message(1, FILE)])
    assert refused.status is ResultStatus.PERMANENT and "at most" in (refused.error or "")
    assert fake.calls["media/upload"] == 0
