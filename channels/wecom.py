"""WeCom (企业微信) customer-contact adapter: mass-send tasks and staff reminders.

WeCom's API cannot message a customer directly. It offers two execution modes:

- ``task`` (群发任务): ``externalcontact/add_msg_template`` creates a mass-send task
  that the staff member (the sender account) confirms in the WeCom client. A
  ``sent`` result here means *the task was created*; its ``provider_message_id``
  is the task's ``msgid``, shared by every delivery in the same call. Whether
  each customer or group actually received it is only known after the staff
  member confirms, so the scheduler records the msgid and later resolves the
  delivery with :meth:`WeComAdapter.poll_task` (``get_groupmsg_send_result``).
- ``remind`` (提醒员工发送): an app message (``message/send``) tells the staff
  member what to send to whom; the provider id is that app message's ``msgid``.

``send`` is not possible here and fails permanently with a pointer to the modes
above. Calls are not idempotent: WeCom has no dedupe key for tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, HttpUrl, SecretStr, field_validator

from channels.base import (
    URL_CREDENTIALS,
    AdapterConfig,
    AdapterContext,
    Capabilities,
    OutboundMessage,
    SendResult,
    TaskOutcome,
    TaskStatus,
)
from channels.wecom_content import (
    ContentError,
    build_task_content,
    remind_text,
    task_body,
)

__all__ = ["TaskOutcome", "WeComAdapter", "WeComAPIError", "WeComConfig"]

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin"

MAX_CONTACTS_PER_TASK = 10_000
MAX_GROUPS_PER_TASK = 2_000
MAX_REMIND_TEXT_BYTES = 2_048
POLL_PAGE_SIZE = 1_000
MAX_REMINDS_PER_DAY = 3  # remind_groupmsg_send (document/path/97610)

# Refresh the cached token this long before WeCom says it expires.
TOKEN_SAFETY_MARGIN_S = 300.0

# Access token invalid (40014, 40001) or expired (42001): refresh once and retry.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
# errcode -> retry_after hint (None: let the scheduler's backoff decide).
RETRYABLE_ERRCODES: dict[int, float | None] = {
    -1: None,  # system busy
    45009: 60.0,  # API frequency limit
    45033: 5.0,  # concurrent call limit
    40014: None,  # still invalid after one refresh
    42001: None,  # still expired after one refresh
}


# get_groupmsg_send_result status codes.
_TASK_STATUS: dict[int, tuple[TaskStatus, str | None]] = {
    0: ("pending", None),
    1: ("sent", None),
    2: ("failed", "not a friend of the sender (any more)"),
    3: ("skipped", "the customer already received a mass message (WeCom's mass-send quota)"),
}


class WeComConfig(AdapterConfig):
    corp_id: str = Field(min_length=1)
    corp_secret: SecretStr = Field(min_length=1)
    agent_id: int | None = None  # the app that sends "remind" messages
    base_url: HttpUrl = Field(HttpUrl(DEFAULT_BASE_URL), json_schema_extra=URL_CREDENTIALS)
    timeout_s: float = Field(default=10.0, gt=0)
    # The admin's mass-send quota per customer / group (客户联系 → 群发 frequency):
    # sopbot holds task-mode sends to it (scheduler.outbox.wecom_quota); None: off.
    mass_send_quota: Literal["days_of_month", "7_per_week", "1_per_day"] | None = "days_of_month"
    # Nudge the staff member about an unconfirmed mass-send task this many hours
    # after it was created (remind_groupmsg_send); WeCom allows 3 a day a task.
    remind_after_hours: list[float] = Field(default_factory=list, max_length=20)

    @field_validator("remind_after_hours")
    @classmethod
    def _within_wecoms_limit(cls, value: list[float]) -> list[float]:
        hours = sorted(value)
        if any(h <= 0 for h in hours):
            raise ValueError("remind_after_hours must be positive hours after the task")
        for i in range(len(hours) - MAX_REMINDS_PER_DAY):
            if hours[i + MAX_REMINDS_PER_DAY] - hours[i] < 24:
                raise ValueError(
                    f"WeCom allows {MAX_REMINDS_PER_DAY} reminders a day per task; "
                    f"{hours[i : i + MAX_REMINDS_PER_DAY + 1]} are within 24 h"
                )
        return hours


class WeComAPIError(Exception):
    """A WeCom call failed; ``retryable`` says whether trying later may help."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after

    @classmethod
    def from_errcode(cls, code: int, errmsg: str) -> WeComAPIError:
        reason = f"WeCom errcode {code}: {errmsg}"
        if code in RETRYABLE_ERRCODES:
            return cls(reason, retryable=True, retry_after=RETRYABLE_ERRCODES[code])
        return cls(reason, retryable=False)

    def as_result(self) -> SendResult:
        if self.retryable:
            return SendResult.retryable(self.reason, retry_after=self.retry_after)
        return SendResult.permanent(self.reason)


class WeComAdapter:
    """WeCom enterprise API adapter (modes ``task`` and ``remind``).

    In ``task`` mode messages are grouped by (sender account, target kind,
    identical rendered content) so that a welcome sent to 25,000 customers is three
    ``add_msg_template`` calls, not 25,000; personalised content yields one call
    per distinct text. Contacts go 10,000 per call, groups 2,000 per call.
    """

    name: ClassVar[str] = "wecom"
    config_model: ClassVar[type[AdapterConfig]] = WeComConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        parts=frozenset({"text", "image", "link", "miniprogram", "file", "video"}),
        targets=frozenset({"contact", "group"}),
        modes=frozenset({"task", "remind", "welcome", "moment"}),
        idempotent=False,
        max_batch=10_000,
        connection_check=True,
        task_outcomes=True,
    )

    def __init__(self, config: WeComConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self._base_url = str(config.base_url).rstrip("/")
        self._token: str | None = None
        self._token_expires_at: datetime | None = None
        self._token_lock = asyncio.Lock()
        self._moment_ids: dict[str, str] = {}  # moment job id -> moment id
        self._corp_tags: dict[str, str] | None = None  # tag name -> WeCom tag id
        # (media type, address) -> (WeCom media id, uploaded at): channels.wecom_media
        self._media: dict[tuple[str, str], tuple[str, datetime]] = {}

    # -- sending ------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        # The welcome and moment modes live in their own modules, which use this one.
        from channels import wecom_media, wecom_moments, wecom_welcome

        results: list[SendResult | None] = [None] * len(messages)
        messages = list(messages)
        # covers and files by address become WeCom media first (channels.wecom_media)
        uploads = [
            i
            for i, m in enumerate(messages)
            if m.mode in ("task", "welcome") and any(map(wecom_media.needs_upload, m.parts))
        ]
        failed = await wecom_media.with_media_all(self, messages, uploads)
        for index, result in failed.items():
            results[index] = result
        task_indices: list[int] = []
        moment_indices: list[int] = []
        welcome_indices: list[int] = []
        for index, message in enumerate(messages):
            if index in failed:
                continue
            if message.mode == "task":
                task_indices.append(index)
            elif message.mode == "remind":
                results[index] = await self._remind(message)
            elif message.mode == "welcome":
                welcome_indices.append(index)
            elif message.mode == "moment":
                moment_indices.append(index)
            elif message.mode == "send":
                results[index] = SendResult.permanent(
                    "WeCom cannot send to customers directly; "
                    "use mode 'task' (staff confirms a mass send) or 'remind'"
                )
            else:
                results[index] = SendResult.permanent(f"unknown execution mode {message.mode!r}")
        if task_indices:
            for index, result in await self._send_tasks(messages, task_indices):
                results[index] = result
        if welcome_indices:
            welcomed = await wecom_welcome.send_welcomes(
                self, [messages[i] for i in welcome_indices]
            )
            for index, result in zip(welcome_indices, welcomed, strict=True):
                results[index] = result
        if moment_indices:
            created = await wecom_moments.create_moments(
                self, [messages[i] for i in moment_indices]
            )
            for index, result in zip(moment_indices, created, strict=True):
                results[index] = result
        return [
            r if r is not None else SendResult.permanent("WeCom adapter produced no result")
            for r in results
        ]

    async def _send_tasks(
        self, messages: Sequence[OutboundMessage], indices: list[int]
    ) -> list[tuple[int, SendResult]]:
        out: list[tuple[int, SendResult]] = []
        # (sender, target kind, content fingerprint) -> (content, target id -> indices)
        groups: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, list[int]]]] = {}
        for index in indices:
            message = messages[index]
            if not message.account_external_id:
                out.append((index, SendResult.permanent("no sender account for a WeCom task")))
                continue
            if message.target_kind not in ("contact", "group"):
                out.append(
                    (index, SendResult.permanent(f"unknown target kind {message.target_kind!r}"))
                )
                continue
            try:
                content = build_task_content(message.parts)
            except ContentError as exc:
                out.append((index, SendResult.permanent(str(exc))))
                continue
            fingerprint = json.dumps(content, sort_keys=True, ensure_ascii=False)
            key = (message.account_external_id, message.target_kind, fingerprint)
            _, targets = groups.setdefault(key, (content, {}))
            targets.setdefault(message.target_external_id, []).append(index)

        rate_limited: WeComAPIError | None = None
        for (sender, target_kind, _), (content, targets) in groups.items():
            size = MAX_GROUPS_PER_TASK if target_kind == "group" else MAX_CONTACTS_PER_TASK
            target_ids = list(targets)
            for start in range(0, len(target_ids), size):
                chunk = target_ids[start : start + size]
                chunk_indices = [i for target_id in chunk for i in targets[target_id]]
                if rate_limited is not None:
                    # Don't hammer an API that just told us to slow down.
                    out.extend((i, rate_limited.as_result()) for i in chunk_indices)
                    continue
                body = task_body(sender, target_kind, chunk, content)
                try:
                    data = await self._call("externalcontact/add_msg_template", body)
                except WeComAPIError as exc:
                    if exc.retry_after is not None:
                        rate_limited = exc
                    out.extend((i, exc.as_result()) for i in chunk_indices)
                    continue
                msgid = str(data.get("msgid") or "") or None
                failed = set(data.get("fail_list") or [])
                for target_id in chunk:
                    result = (
                        SendResult.permanent(
                            f"WeCom could not reach {target_id}: not a friend / not reachable"
                        )
                        if target_id in failed
                        else SendResult.sent(msgid)
                    )
                    out.extend((i, result) for i in targets[target_id])
        return out

    async def _remind(self, message: OutboundMessage) -> SendResult:
        if self.config.agent_id is None:
            return SendResult.permanent("WeCom remind mode needs agent_id in the channel config")
        if not message.account_external_id:
            return SendResult.permanent("no staff account to remind")
        content = remind_text(message)
        if len(content.encode("utf-8")) > MAX_REMIND_TEXT_BYTES:
            return SendResult.permanent(
                f"reminder text is longer than WeCom's {MAX_REMIND_TEXT_BYTES} bytes; "
                "shorten the message"
            )
        body = {
            "touser": message.account_external_id,
            "msgtype": "text",
            "agentid": self.config.agent_id,
            "text": {"content": content},
        }
        try:
            data = await self._call("message/send", body)
        except WeComAPIError as exc:
            return exc.as_result()
        invalid = str(data.get("invaliduser") or "").split("|")
        if message.account_external_id.lower() in (u.lower() for u in invalid if u):
            return SendResult.permanent(
                f"staff account {message.account_external_id} is not visible to app "
                f"{self.config.agent_id}"
            )
        return SendResult.sent(str(data.get("msgid") or "") or None)

    async def corp_tags(self, *, refresh: bool = False) -> dict[str, str]:
        """Corp tag name → WeCom tag id (``channels.wecom_contacts``)."""
        from channels import wecom_contacts

        return await wecom_contacts.corp_tags(self, refresh=refresh)

    async def corp_tag_groups(self) -> dict[str, list[str]]:
        """Tag group name → its tag names, fetched now (``channels.wecom_contacts``)."""
        from channels import wecom_contacts

        return await wecom_contacts.corp_tag_groups(self)

    async def check_connection(self) -> str:
        """Fetch an access token (sends nothing): proves corp_id and corp_secret."""
        self._token = None
        await self._access_token()
        return f"WeCom accepted corp {self.config.corp_id}: access token issued"

    # -- task results -------------------------------------------------------

    async def poll_task(self, msgid: str, userid: str) -> dict[str, str]:
        """Per target (external_userid or chat_id): "sent", "pending" or "failed".

        ``userid`` is the sender account's external id; WeCom reports results per
        sender. Reasons for failures are in :meth:`poll_task_outcomes`.
        Raises :class:`WeComAPIError` when WeCom cannot answer.
        """
        outcomes = await self.poll_task_outcomes(msgid, userid)
        return {target: outcome.status for target, outcome in outcomes.items()}

    async def poll_task_outcomes(self, msgid: str, userid: str) -> dict[str, TaskOutcome]:
        """Resolve a mass-send task (``get_groupmsg_send_result``), following pages."""
        if msgid.startswith("moment:"):
            from channels import wecom_moments

            return await wecom_moments.poll_moment(self, msgid, userid)
        outcomes: dict[str, TaskOutcome] = {}
        cursor = ""
        seen: set[str] = set()
        while True:
            body: dict[str, Any] = {"msgid": msgid, "userid": userid, "limit": POLL_PAGE_SIZE}
            if cursor:
                body["cursor"] = cursor
            data = await self._call("externalcontact/get_groupmsg_send_result", body)
            for row in data.get("send_list") or []:
                target = row.get("external_userid") or row.get("chat_id")
                if not target:
                    continue
                unknown: tuple[TaskStatus, str | None] = (
                    "failed",
                    f"unknown WeCom send status {row.get('status')!r}",
                )
                status, reason = _TASK_STATUS.get(int(row.get("status", -1)), unknown)
                send_time = row.get("send_time")
                outcomes[str(target)] = TaskOutcome(
                    status, reason, int(send_time) if send_time else None
                )
            cursor = str(data.get("next_cursor") or "")
            if not cursor or cursor in seen:
                return outcomes
            seen.add(cursor)

    # -- HTTP plumbing --------------------------------------------------------

    async def _upload(self, media_type: str, filename: str, data: bytes) -> dict[str, Any]:
        """``media/upload`` (multipart, field ``media``) with a valid token."""
        return await self._call(
            "media/upload", query={"type": media_type}, files={"media": (filename, data)}
        )

    async def _call(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` or multipart ``files`` (GET with ``query`` when there is
        neither) with a valid token; refresh the token once if WeCom rejects it."""
        method = "POST" if body is not None or files else "GET"
        token = await self._access_token()
        data = await self._request(
            method, path, params={"access_token": token, **(query or {})}, json=body, files=files
        )
        code = _errcode(data)
        if code in TOKEN_ERRCODES:
            self._invalidate_token(token)
            token = await self._access_token()
            data = await self._request(
                method,
                path,
                params={"access_token": token, **(query or {})},
                json=body,
                files=files,
            )
            code = _errcode(data)
        if code != 0:
            raise WeComAPIError.from_errcode(code, str(data.get("errmsg", "")))
        return data

    async def _access_token(self) -> str:
        async with self._token_lock:
            now = self.context.clock.now()
            if (
                self._token is not None
                and self._token_expires_at is not None
                and now < self._token_expires_at
            ):
                return self._token
            data = await self._request(
                "GET",
                "gettoken",
                params={
                    "corpid": self.config.corp_id,
                    "corpsecret": self.config.corp_secret.get_secret_value(),
                },
            )
            code = _errcode(data)
            if code != 0 or not data.get("access_token"):
                # A token error from gettoken itself means bad credentials, not expiry.
                if code in TOKEN_ERRCODES or code == 0:
                    raise WeComAPIError(
                        f"WeCom gettoken failed (errcode {code}: {data.get('errmsg', '')}); "
                        "check corp_id and corp_secret",
                        retryable=False,
                    )
                raise WeComAPIError.from_errcode(code, str(data.get("errmsg", "")))
            expires_in = float(data.get("expires_in") or 7200)
            margin = min(TOKEN_SAFETY_MARGIN_S, expires_in / 2)
            self._token = str(data["access_token"])
            self._token_expires_at = now + timedelta(seconds=expires_in - margin)
            return self._token

    def _invalidate_token(self, token: str) -> None:
        # Only drop the token we used; a concurrent caller may already have refreshed it.
        if self._token == token:
            self._token = None
            self._token_expires_at = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        json: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> dict[str, Any]:
        url = f"{self._base_url}/{path}"
        try:
            response = await self.context.http.request(
                method, url, params=params, json=json, files=files, timeout=self.config.timeout_s
            )
        except httpx.TimeoutException:
            raise WeComAPIError(
                f"WeCom {path} timed out after {self.config.timeout_s:g} s", retryable=True
            ) from None
        except httpx.TransportError as exc:
            raise WeComAPIError(
                f"WeCom {path} connection failed: {exc.__class__.__name__}", retryable=True
            ) from None
        if response.status_code >= 500:
            raise WeComAPIError(
                f"WeCom {path} returned HTTP {response.status_code}", retryable=True
            )
        if response.status_code != 200:
            raise WeComAPIError(
                f"WeCom {path} returned HTTP {response.status_code}", retryable=False
            )
        try:
            data = response.json()
        except ValueError:
            raise WeComAPIError(f"WeCom {path} returned a non-JSON body", retryable=True) from None
        if not isinstance(data, dict):
            raise WeComAPIError(f"WeCom {path} returned an unexpected body", retryable=True)
        return data


def _errcode(data: dict[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return -1
