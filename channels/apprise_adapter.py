"""An adapter over apprise (optional extra: ``pip install 'sopbot[apprise]'``).

One channel instance reaches any service apprise supports — DingTalk, Feishu /
Lark, Telegram, Slack, Discord, e-mail, ... — by its apprise URL(s). A URL may
name the recipient per delivery with ``{target}`` (the contact's or group's
external id) and ``{account}`` (the owning staff account), e.g.
``tgram://BOT_TOKEN/{target}``; without placeholders every delivery goes to the
URL's fixed destination (a team chat, an inbox).

URLs embed tokens, so they are secrets: masked by the API, never logged (errors
name the service and the URL's scheme only).

apprise does not say whether a failure is temporary, so a failed notification is
retryable (bounded by the channel's max attempts). With several URLs, a delivery
that reached at least one service is ``sent`` — retrying would repeat it on the
services that already got it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import apprise
from pydantic import Field, SecretStr, field_validator

from channels.base import (
    AdapterConfig,
    AdapterContext,
    Capabilities,
    OutboundMessage,
    SendResult,
)

_PLACEHOLDER_SAMPLE = {"target": "sample", "account": "sample"}
_ERROR_CHARS = 300


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] + "://" if "://" in url else "(no scheme)"


def _fill(url: str, values: dict[str, str]) -> str:
    out = url
    for key, value in values.items():
        out = out.replace("{" + key + "}", quote(value, safe=""))
    return out


class AppriseConfig(AdapterConfig):
    urls: list[SecretStr] = Field(
        min_length=1, description="apprise URLs; {target} and {account} are filled per delivery"
    )
    title: str = Field("", description="title; {template} and {touchpoint} are filled in")
    body_format: Literal["text", "markdown", "html"] = "text"
    max_concurrency: int = Field(8, ge=1, le=64)

    @field_validator("urls")
    @classmethod
    def _apprise_knows_them(cls, urls: list[SecretStr]) -> list[SecretStr]:
        for index, secret in enumerate(urls):
            url = _fill(secret.get_secret_value(), _PLACEHOLDER_SAMPLE)
            if apprise.Apprise.instantiate(url) is None:
                raise ValueError(
                    f"urls[{index}]: apprise does not recognise this URL "
                    f"(scheme {_scheme(url)}); see the apprise wiki for the URL format"
                )
        return urls


def render_body(parts: Sequence[dict[str, Any]], body_format: str) -> str:
    """One notification body from the rendered parts."""
    markdown = body_format == "markdown"
    lines: list[str] = []
    for part in parts:
        kind = part.get("kind")
        if kind == "text":
            lines.append(str(part.get("text", "")))
        elif kind == "link":
            title, url = str(part.get("title", "")), str(part.get("url", ""))
            lines.append(f"[{title}]({url})" if markdown else f"{title} {url}".strip())
            if part.get("description"):
                lines.append(str(part["description"]))
        elif kind == "image":
            url = str(part.get("url", ""))
            lines.append(f"![]({url})" if markdown else url)
        elif kind == "file":
            name, url = str(part.get("name") or ""), str(part.get("url", ""))
            lines.append(f"[{name or url}]({url})" if markdown else f"{name} {url}".strip())
        else:
            raise ValueError(f"apprise channel cannot send part kind {kind!r}")
    return "\n".join(lines)


class AppriseAdapter:
    name: ClassVar[str] = "apprise"
    config_model: ClassVar[type[AdapterConfig]] = AppriseConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        parts=frozenset({"text", "image", "link", "file"}),
        targets=frozenset({"contact", "group"}),
        modes=frozenset({"send"}),
        idempotent=False,
        max_batch=50,
        connection_check=True,
    )

    def __init__(self, config: AppriseConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        # No plugin directories: only apprise's own services (and ones registered in code).
        self._asset = apprise.AppriseAsset(plugin_paths=[])

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        semaphore = asyncio.Semaphore(self.config.max_concurrency)

        async def bounded(message: OutboundMessage) -> SendResult:
            async with semaphore:
                try:
                    return await self._send_one(message)
                except Exception as exc:  # one bad message must not sink the batch
                    return SendResult.permanent(f"apprise adapter error: {type(exc).__name__}")

        return list(await asyncio.gather(*(bounded(m) for m in messages)))

    async def _send_one(self, message: OutboundMessage) -> SendResult:
        if message.mode != "send":
            return SendResult.permanent(
                f"apprise channel only supports mode 'send', not {message.mode!r}"
            )
        try:
            body = render_body(message.parts, self.config.body_format)
        except ValueError as exc:
            return SendResult.permanent(str(exc))
        if not body.strip():
            return SendResult.permanent("message is empty: nothing to send")
        notifier = apprise.Apprise(asset=self._asset)
        values = {
            "target": message.target_external_id,
            "account": message.account_external_id or "",
        }
        for index, secret in enumerate(self.config.urls):
            url = _fill(secret.get_secret_value(), values)
            if not notifier.add(url):
                return SendResult.permanent(
                    f"apprise cannot use urls[{index}] ({_scheme(url)}) for this recipient"
                )
        title = self.config.title.replace("{template}", message.template_name or "").replace(
            "{touchpoint}", message.touchpoint_name or ""
        )
        result = await asyncio.to_thread(
            notifier.notify, body=body, title=title, body_format=self.config.body_format
        )
        if result:
            return SendResult.sent(None)
        return self._failure(result)

    def _failure(self, result: Any) -> SendResult:
        # apprise >= 2 returns an AppriseResult with per-service detail; 1.x a bool.
        services = list(result) if hasattr(result, "results") else []
        if services and any(getattr(s, "status", 1) == 0 for s in services):
            return SendResult.sent(None)  # partial: some services have it already
        status = getattr(getattr(result, "status", None), "name", "FAILURE")
        if status == "NOMATCH":
            return SendResult.permanent("apprise: no service matched the configured URLs")
        names = sorted({str(getattr(s, "name", "?")) for s in services}) or ["apprise"]
        detail = _last_log(services)
        reason = f"apprise: {', '.join(names)} notification {status.lower()}"
        if detail:
            reason += f": {detail}"
        return SendResult.retryable(reason[:_ERROR_CHARS])

    async def check_connection(self) -> str:
        """Parse every URL (no message is sent): which services this instance reaches."""
        names = []
        for secret in self.config.urls:
            plugin = apprise.Apprise.instantiate(
                _fill(secret.get_secret_value(), _PLACEHOLDER_SAMPLE), asset=self._asset
            )
            if plugin is None:
                raise ValueError(f"apprise does not recognise {_scheme(secret.get_secret_value())}")
            names.append(str(getattr(plugin, "service_name", None) or _scheme(str(plugin))))
        return f"apprise reaches {len(names)} service(s): {', '.join(names)} (nothing was sent)"


def _last_log(services: Sequence[Any]) -> str | None:
    for service in reversed(services):
        for attempt in reversed(getattr(service, "attempts", ()) or ()):
            for entry in reversed(list(getattr(attempt, "logs", ()) or ())):
                message = getattr(entry, "message", None)
                if message:
                    return " ".join(str(message).split())
    return None
