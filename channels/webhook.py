"""Generic signed HTTP webhook: POST each delivery as JSON to a URL you run.

Receivers verify the request with :func:`verify_signature` and must deduplicate on
the ``Idempotency-Key`` header (the delivery's stable key). That contract is what
lets this adapter declare ``idempotent=True``: a delivery whose worker died
mid-send may be posted again, and the receiver drops the second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
from pydantic import Field, HttpUrl, SecretStr

from channels.base import (
    URL_CREDENTIALS,
    AdapterConfig,
    AdapterContext,
    Capabilities,
    OutboundMessage,
    SendResult,
)

SIGNATURE_HEADER = "X-Sopbot-Signature"
TIMESTAMP_HEADER = "X-Sopbot-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"

_SUPPORTED_PARTS = frozenset({"text", "image", "link", "miniprogram", "file"})
_BODY_SNIPPET_CHARS = 200


class WebhookConfig(AdapterConfig):
    # Shown with any ?token=… or password masked.
    url: HttpUrl = Field(json_schema_extra=URL_CREDENTIALS)
    secret: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    # Requests in flight per channel instance. 32 matches the connections of the
    # client adapters are lent (channels.http): a 20 ms gateway takes ~1,600/s.
    max_concurrency: int = Field(default=32, ge=1, le=256)
    # Header values often carry credentials (Authorization: Bearer ...): every
    # value is a secret, write-only like ``secret``.
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="extra request headers; values are write-only"
    )


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Sopbot-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes | SecretStr, timestamp: int | str, body: bytes, header: str
) -> bool:
    """Check a received ``X-Sopbot-Signature`` header in constant time.

    ``timestamp`` is the ``X-Sopbot-Timestamp`` header and ``body`` the raw request
    bytes. Receivers should also reject timestamps far from their own clock (a few
    minutes) to stop replays.
    """
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms are GMT
        when = when.replace(tzinfo=now.tzinfo)
    return max(0.0, (when - now).total_seconds())


class WebhookAdapter:
    """POSTs every message as its own signed JSON request, concurrently.

    Headers: ``X-Sopbot-Timestamp`` (unix seconds), ``X-Sopbot-Signature``
    (``sha256=`` + hex HMAC-SHA256 of ``"{timestamp}." + body``, only when a secret
    is configured), ``Idempotency-Key`` (the delivery's stable key: receivers must
    drop repeats) and ``Content-Type: application/json``.

    2xx is sent (provider id from the response's ``id``/``message_id`` or the
    ``X-Message-Id`` header); 408, 429, 5xx, timeouts and connection errors are
    retryable (honouring ``Retry-After``); any other status is permanent.
    """

    name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[AdapterConfig]] = WebhookConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        parts=_SUPPORTED_PARTS,
        targets=frozenset({"contact", "group"}),
        modes=frozenset({"send"}),
        idempotent=True,
        max_batch=200,
        connection_check=True,
    )

    def __init__(self, config: WebhookConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        # Per instance, not per call: concurrent batches share max_concurrency, so
        # requests in flight (and the HTTP pool's connections) stay bounded.
        self._in_flight = asyncio.Semaphore(config.max_concurrency)
        # Parsed once: httpx parses a URL given as text on every request.
        self._url = httpx.URL(str(config.url))
        self._static_headers = {k: v.get_secret_value() for k, v in config.headers.items()}

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        semaphore = self._in_flight

        async def bounded(message: OutboundMessage) -> SendResult:
            async with semaphore:
                try:
                    return await self._send_one(message)
                except Exception as exc:  # one bad message must not sink the batch
                    return SendResult.permanent(f"webhook adapter error: {exc!r}")

        return list(await asyncio.gather(*(bounded(m) for m in messages)))

    async def check_connection(self) -> str:
        """HEAD the URL (sends no message): any HTTP answer proves it is reachable."""
        try:
            response = await self.context.http.head(self._url, timeout=self.config.timeout_s)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"webhook URL not reachable: {exc.__class__.__name__}") from None
        return f"webhook URL reachable (HEAD answered HTTP {response.status_code})"

    def build_body(self, message: OutboundMessage) -> bytes:
        """The exact bytes posted (and signed) for ``message``."""
        payload: dict[str, Any] = {
            "delivery_id": message.delivery_id,
            "idempotency_key": message.idempotency_key,
            "target": {
                "kind": message.target_kind,
                "external_id": message.target_external_id,
                "name": message.target_name,
            },
            "account": message.account_external_id,
            "mode": message.mode,
            "template": message.template_name,
            "touchpoint": message.touchpoint_name,
            "parts": message.parts,
        }
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _headers(self, message: OutboundMessage, body: bytes) -> dict[str, str]:
        timestamp = int(self.context.clock.now().timestamp())
        # Static headers first, so configuration cannot break the signed contract.
        headers = dict(self._static_headers)
        headers["Content-Type"] = "application/json"
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[IDEMPOTENCY_HEADER] = message.idempotency_key
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.secret.get_secret_value(), timestamp, body)
        return headers

    async def _send_one(self, message: OutboundMessage) -> SendResult:
        if message.mode not in self.capabilities.modes:
            return SendResult.permanent(
                f"webhook channel only supports mode 'send', not {message.mode!r}"
            )
        unsupported = sorted({str(p.get("kind")) for p in message.parts} - self.capabilities.parts)
        if unsupported:
            return SendResult.permanent(
                f"webhook channel cannot send part kind(s): {', '.join(unsupported)}"
            )
        try:
            body = self.build_body(message)
        except (TypeError, ValueError) as exc:
            return SendResult.permanent(f"message parts are not JSON-serialisable: {exc}")

        try:
            response = await self.context.http.post(
                self._url,
                content=body,
                headers=self._headers(message, body),
                timeout=self.config.timeout_s,
            )
        except httpx.TimeoutException:
            return SendResult.retryable(f"webhook timed out after {self.config.timeout_s:g} s")
        except httpx.TransportError as exc:
            return SendResult.retryable(f"webhook connection failed: {exc.__class__.__name__}")
        return self._result_for(response)

    def _result_for(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return SendResult.sent(_provider_id(response))
        snippet = " ".join(response.text[:_BODY_SNIPPET_CHARS].split())
        reason = f"webhook returned HTTP {status}" + (f": {snippet}" if snippet else "")
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), self.context.clock.now()
            )
            return SendResult.retryable(reason, retry_after=retry_after)
        return SendResult.permanent(reason)


def _provider_id(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("id", "message_id"):
            value = data.get(key)
            if value is not None and value != "":
                return str(value)
    return response.headers.get("X-Message-Id") or None
