"""WeCom group robot (群机器人) adapter for internal group chats.

A group robot is a webhook bound to exactly one group chat: whatever the
delivery's target id says, the message lands in that group (the id is only
informational). WeCom limits a robot to 20 messages per minute; beyond that it
answers errcode 45009, which is retryable after a minute. One delivery may take
more than one robot message (its text, then its links/images as news cards), so
it counts more than once against that limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator

from channels.base import (
    URL_CREDENTIALS,
    AdapterConfig,
    AdapterContext,
    Capabilities,
    OutboundMessage,
    SendResult,
)
from channels.wecom import WeComAPIError

DEFAULT_WEBHOOK_BASE = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
MAX_TEXT_BYTES = 2_048
MAX_NEWS_ARTICLES = 8


class WeComGroupBotConfig(AdapterConfig):
    """Either the full ``webhook_url`` (it embeds the key) or ``key`` + ``base_url``."""

    # The webhook URL carries the robot's key, so it is a secret too.
    webhook_url: SecretStr | None = None
    key: SecretStr | None = None
    base_url: HttpUrl = Field(HttpUrl(DEFAULT_WEBHOOK_BASE), json_schema_extra=URL_CREDENTIALS)
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_a_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        try:
            url = httpx.URL(value.get_secret_value())
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError("webhook_url is not a valid URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("webhook_url must be an http(s) URL")
        if not url.params.get("key"):
            raise ValueError("webhook_url must contain the robot's ?key=")
        return value

    @model_validator(mode="after")
    def _exactly_one_destination(self) -> WeComGroupBotConfig:
        if (self.webhook_url is None) == (self.key is None):
            raise ValueError("set exactly one of webhook_url or key")
        return self

    def endpoint(self) -> str:
        if self.webhook_url is not None:
            return self.webhook_url.get_secret_value()
        assert self.key is not None
        return str(httpx.URL(str(self.base_url), params={"key": self.key.get_secret_value()}))


class _UnsupportedContent(ValueError):
    pass


class WeComGroupBotAdapter:
    """Posts text as ``text`` and links/images as ``news`` cards to one group chat.

    Images become news cards whose picture and click target are the image URL (the
    robot's own ``image`` type needs the file's bytes, which we do not fetch).
    Messages go out one after another; after a rate-limit answer the rest of the
    batch is returned as retryable without calling WeCom again.
    """

    name: ClassVar[str] = "wecom_group_bot"
    config_model: ClassVar[type[AdapterConfig]] = WeComGroupBotConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        parts=frozenset({"text", "image", "link"}),
        targets=frozenset({"group"}),
        modes=frozenset({"send"}),
        idempotent=False,
        max_batch=20,
    )

    def __init__(self, config: WeComGroupBotConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self._endpoint = config.endpoint()

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results: list[SendResult] = []
        rate_limited: SendResult | None = None
        for message in messages:
            if rate_limited is not None:
                results.append(rate_limited)
                continue
            try:
                result = await self._send_one(message)
            except Exception as exc:  # one bad message must not sink the batch
                result = SendResult.permanent(f"group bot adapter error: {exc!r}")
            if result.retry_after is not None:
                rate_limited = result
            results.append(result)
        return results

    async def _send_one(self, message: OutboundMessage) -> SendResult:
        if message.mode != "send":
            return SendResult.permanent(
                f"WeCom group bot only supports mode 'send', not {message.mode!r}"
            )
        if message.target_kind != "group":
            return SendResult.permanent(
                "a WeCom group bot can only post to the group chat it is bound to"
            )
        try:
            payloads = build_payloads(message.parts)
        except _UnsupportedContent as exc:
            return SendResult.permanent(str(exc))

        for posted, payload in enumerate(payloads):
            result = await self._post(payload)
            if result is not None:
                if posted:
                    # Retrying will repeat what already went out; say so in the log.
                    note = f" ({posted} of {len(payloads)} bot messages were already posted)"
                    return SendResult(
                        result.status, None, f"{result.error}{note}", result.retry_after
                    )
                return result
        return SendResult.sent(None)  # the robot API returns no message id

    async def _post(self, payload: dict[str, Any]) -> SendResult | None:
        """None when WeCom accepted the payload, else the failure."""
        try:
            response = await self.context.http.post(
                self._endpoint, json=payload, timeout=self.config.timeout_s
            )
        except httpx.TimeoutException:
            return SendResult.retryable(
                f"WeCom group bot timed out after {self.config.timeout_s:g} s"
            )
        except httpx.TransportError as exc:
            return SendResult.retryable(
                f"WeCom group bot connection failed: {exc.__class__.__name__}"
            )
        if response.status_code >= 500:
            return SendResult.retryable(f"WeCom group bot returned HTTP {response.status_code}")
        if response.status_code != 200:
            return SendResult.permanent(f"WeCom group bot returned HTTP {response.status_code}")
        try:
            data = response.json()
            code = int(data.get("errcode", 0))
        except (ValueError, AttributeError, TypeError):
            return SendResult.retryable("WeCom group bot returned an unreadable body")
        if code == 0:
            return None
        # The same errcodes as WeCom's server API: rate limit and busy are retryable.
        return WeComAPIError.from_errcode(code, str(data.get("errmsg", ""))).as_result()


def build_payloads(parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Robot messages for one delivery: its text first, then news cards (≤ 8 each)."""
    texts: list[str] = []
    articles: list[dict[str, str]] = []
    for part in parts:
        kind = part.get("kind")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "link":
            if not part.get("title") or not part.get("url"):
                raise _UnsupportedContent("link part needs a title and a url")
            article = {"title": str(part["title"]), "url": str(part["url"])}
            if part.get("description"):
                article["description"] = str(part["description"])
            if part.get("image_url"):
                article["picurl"] = str(part["image_url"])
            articles.append(article)
        elif kind == "image":
            if not part.get("url"):
                raise _UnsupportedContent("image part has no url")
            url = str(part["url"])
            articles.append({"title": str(part.get("title") or "图片"), "url": url, "picurl": url})
        else:
            raise _UnsupportedContent(
                f"WeCom group bot cannot send part kind {kind!r} (only text, image, link)"
            )

    payloads: list[dict[str, Any]] = []
    text = "\n".join(texts)
    if text.strip():
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise _UnsupportedContent(
                f"text is {size} bytes; a WeCom group bot allows at most {MAX_TEXT_BYTES} bytes"
            )
        payloads.append({"msgtype": "text", "text": {"content": text}})
    for start in range(0, len(articles), MAX_NEWS_ARTICLES):
        chunk = articles[start : start + MAX_NEWS_ARTICLES]
        payloads.append({"msgtype": "news", "news": {"articles": chunk}})
    if not payloads:
        raise _UnsupportedContent("message is empty: nothing to send")
    return payloads
