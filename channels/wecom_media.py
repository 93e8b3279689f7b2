"""Attachments WeCom accepts only as its own temporary media: a mini-program
card's cover (``pic_media_id``) and a file (``media_id``).

A part that names its cover or file by address (a material from sopbot's
library goes out with its signed public address) is fetched and uploaded with
``media/upload`` (DOC 90253: image ≤ 10 MB, file ≤ 20 MB; a media id is valid
for 3 days) just before the send, and the id is reused for the same address
while it is comfortably valid. Parts that already carry a ``media_id`` go as
they are; images go by ``pic_url`` as before."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from channels.base import OutboundMessage, SendResult

if TYPE_CHECKING:
    from channels.wecom import WeComAdapter

MEDIA_VALIDITY = timedelta(days=3)
REUSE_WITHIN = timedelta(days=2, hours=12)  # leave half a day before WeCom forgets it
MAX_BYTES = {"image": 10 * 1024 * 1024, "file": 20 * 1024 * 1024}
WECOM_MEDIA = "wecom-media:"


class MediaError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def needs_upload(part: dict[str, Any]) -> tuple[str, str] | None:
    """``(media type, address)`` when ``part`` must become WeCom media first."""
    if part.get("media_id"):
        return None
    kind = part.get("kind")
    if kind == "miniprogram" and part.get("pic_url"):
        return "image", str(part["pic_url"])
    if kind == "file" and part.get("url") and not str(part["url"]).startswith(WECOM_MEDIA):
        return "file", str(part["url"])
    return None


async def with_media(adapter: WeComAdapter, message: OutboundMessage) -> OutboundMessage:
    """``message`` with every cover and file uploaded as WeCom media
    (``MediaError`` when one cannot be)."""
    wanted = [needs_upload(part) for part in message.parts]
    if not any(wanted):
        return message
    parts = []
    for part, need in zip(message.parts, wanted, strict=True):
        if need is None:
            parts.append(part)
            continue
        media_type, address = need
        media_id = await upload(adapter, media_type, address, str(part.get("name") or ""))
        parts.append({**part, "media_id": media_id})
    return replace(message, parts=parts)


async def with_media_all(
    adapter: WeComAdapter, messages: list[OutboundMessage], indices: list[int]
) -> dict[int, SendResult]:
    """Upload what ``messages[indices]`` need, in place; the failures by index."""
    failed: dict[int, SendResult] = {}
    for index in indices:
        try:
            messages[index] = await with_media(adapter, messages[index])
        except MediaError as exc:
            failed[index] = (
                SendResult.retryable(str(exc)) if exc.retryable else SendResult.permanent(str(exc))
            )
    return failed


async def upload(adapter: WeComAdapter, media_type: str, address: str, name: str) -> str:
    """The WeCom media id of the file at ``address`` (uploaded once per
    ``REUSE_WITHIN``)."""
    now: datetime = adapter.context.clock.now()
    cached = adapter._media.get((media_type, address))
    if cached is not None and now - cached[1] < REUSE_WITHIN:
        return cached[0]
    data = await _fetch(adapter, address, media_type)
    filename = name or address.rsplit("/", 1)[-1].split("?", 1)[0] or media_type
    try:
        answer = await adapter._upload(media_type, filename, data)
    except Exception as exc:  # WeComAPIError: keep its retryability
        raise MediaError(
            f"WeCom media upload of {filename} failed: {exc}",
            retryable=bool(getattr(exc, "retryable", False)),
        ) from None
    media_id = str(answer.get("media_id") or "")
    if not media_id:
        raise MediaError("WeCom media upload answered without a media_id", retryable=True)
    adapter._media[(media_type, address)] = (media_id, now)
    return media_id


async def _fetch(adapter: WeComAdapter, address: str, media_type: str) -> bytes:
    if not address.startswith(("https://", "http://")):
        raise MediaError(f"cannot upload {address!r} to WeCom: not a web address", retryable=False)
    limit = MAX_BYTES[media_type]
    try:
        response = await adapter.context.http.get(address, timeout=adapter.config.timeout_s)
    except httpx.HTTPError as exc:
        raise MediaError(
            f"could not fetch {address} for WeCom: {exc.__class__.__name__}", retryable=True
        ) from None
    if response.status_code != 200:
        raise MediaError(
            f"could not fetch {address} for WeCom: HTTP {response.status_code}",
            retryable=response.status_code >= 500,
        )
    if len(response.content) > limit:
        raise MediaError(
            f"{address} is {len(response.content)} bytes; WeCom takes at most {limit} "
            f"for a {media_type}",
            retryable=False,
        )
    return response.content
