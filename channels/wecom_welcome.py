"""WeCom welcome messages (欢迎语), ``mode: welcome``.

The ``add_external_contact`` callback carries a ``WelcomeCode``; with it
``externalcontact/send_welcome_msg`` greets the new friend directly, without the
staff member's confirmation and without using the customer's mass-send quota.
The code works once, for about 20 s after the event, and WeCom issues none when
the member has a console welcome configured
(developer.work.weixin.qq.com/document/path/92137).

Without a usable code the touchpoint's declared fallback runs: ``task`` (a
mass-send task), ``remind`` (an app message to the staff member) or ``skip``;
the delivery log says which and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from channels.base import OutboundMessage, ResultStatus, SendResult
from channels.wecom import WeComAPIError
from channels.wecom_content import ContentError, build_task_content

if TYPE_CHECKING:
    from channels.wecom import WeComAdapter

# WeCom: the code is valid for 20 seconds after the event (document/path/92137).
WELCOME_VALIDITY = timedelta(seconds=20)
# "already sent / the customer already chatted" and "code invalid or expired":
# the greeting cannot go out this way, so the fallback runs.
FALLBACK_ERRCODES = frozenset({41051, 41096, 40097})
FALLBACKS = ("task", "remind", "skip")


@dataclass(frozen=True)
class Fallback:
    """The welcome cannot use its code: run the touchpoint's fallback, saying why."""

    kind: str
    why: str


async def send_welcome(adapter: WeComAdapter, message: OutboundMessage) -> SendResult | Fallback:
    """Greet a new friend with its WelcomeCode; or the fallback to run instead
    (the adapter batches ``task`` fallbacks into as few mass-send tasks as it can)."""
    options = message.options
    fallback = str(options.get("fallback") or "task")
    if message.target_kind != "contact":
        return SendResult.permanent("mode welcome greets a customer, not a group chat")
    try:
        content = build_task_content(message.parts)
    except ContentError as exc:
        return SendResult.permanent(str(exc))
    code = str(options.get("welcome_code") or "")
    if not code:
        return Fallback(
            fallback,
            "no WelcomeCode: WeCom sent none with the add event "
            "(the member may have a console welcome configured)",
        )
    age = _age(options.get("welcome_at"), adapter.context.clock.now())
    if age is not None and age > WELCOME_VALIDITY:
        return Fallback(
            fallback,
            f"WelcomeCode expired: {age.total_seconds():.0f} s after the add event, "
            f"WeCom accepts it for {WELCOME_VALIDITY.total_seconds():.0f} s",
        )
    try:
        await adapter._call("externalcontact/send_welcome_msg", {"welcome_code": code, **content})
    except WeComAPIError as exc:
        if any(f"errcode {c}:" in exc.reason for c in FALLBACK_ERRCODES):
            return Fallback(fallback, exc.reason)
        return exc.as_result()
    return SendResult(
        ResultStatus.SENT,
        note=f"welcome sent with the WelcomeCode of staff {message.account_external_id}'s "
        "add event (send_welcome_msg)",
    )


async def send_welcomes(
    adapter: WeComAdapter, messages: Sequence[OutboundMessage]
) -> list[SendResult]:
    """Welcome a batch: codes first, then the fallbacks, ``task`` ones batched."""
    results: list[SendResult | None] = [None] * len(messages)
    to_task: dict[int, str] = {}
    for index, message in enumerate(messages):
        outcome = await send_welcome(adapter, message)
        if isinstance(outcome, SendResult):
            results[index] = outcome
        elif outcome.kind in ("remind", "skip"):
            results[index] = await run_fallback(adapter, message, outcome.kind, outcome.why)
        else:
            to_task[index] = outcome.why
    if to_task:
        indices = list(to_task)
        as_tasks = [replace(messages[i], mode="task") for i in indices]
        for position, result in await adapter._send_tasks(as_tasks, list(range(len(as_tasks)))):
            index = indices[position]
            results[index] = _task_fallback(result, to_task[index])
    return [r or SendResult.permanent("no welcome result") for r in results]


def _task_fallback(result: SendResult, why: str) -> SendResult:
    if result.error:
        return replace(
            result, error=f"welcome fell back to a mass-send task ({why}): {result.error}"
        )
    return replace(result, note=f"welcome fell back to a mass-send task: {why}")


async def run_fallback(
    adapter: WeComAdapter, message: OutboundMessage, fallback: str, why: str
) -> SendResult:
    """The touchpoint's fallback for a welcome that could not use its code."""
    if fallback == "skip":
        return SendResult.skipped(f"welcome skipped by its fallback: {why}")
    if fallback == "remind":
        result = await adapter._remind(message)
        if result.error:
            return replace(result, error=f"welcome fell back to a reminder ({why}): {result.error}")
        # No provider id: a reminder is not a mass-send task to poll.
        return replace(
            result,
            provider_message_id=None,
            note=f"welcome fell back to a reminder to staff {message.account_external_id} "
            f"(app message {result.provider_message_id}): {why}",
        )
    [(_, result)] = await adapter._send_tasks([replace(message, mode="task")], [0])
    return _task_fallback(result, why)


def _age(at: object, now: datetime) -> timedelta | None:
    if not isinstance(at, str) or not at:
        return None
    try:
        return now - datetime.fromisoformat(at)
    except (TypeError, ValueError):
        return None
