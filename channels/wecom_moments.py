"""WeCom moments (朋友圈), ``mode: moment``.

``externalcontact/add_moment_task`` creates a moment asynchronously (a job id);
``get_moment_task_result`` gives the job's outcome and the moment id; each chosen
staff member then publishes it from the WeCom client, and ``get_moment_task``
reports every member's ``publish_status``
(developer.work.weixin.qq.com/document/path/95094 and 93333).

Deliveries of one batch with the same content become one moment, visible to the
customers of the staff members who own them (plus the touchpoint's
``visible_to`` members and tags). Each delivery is then ``sent`` with the
provider id ``moment:<jobid>`` and awaits its staff member's publishing, which
the task poll records per member (:func:`poll_moment`).

Content: text plus up to 9 images, or one video, or one link
(:func:`moment_shape_problem`, which also refuses a mix when the template is
validated: ``sop_templates.mode_rules``).
WeCom takes images and videos only as uploaded media, so their url must be
``wecom-media:<media_id>``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from channels.base import OutboundMessage, SendResult, TaskOutcome
from channels.wecom import WeComAPIError

if TYPE_CHECKING:
    from channels.wecom import WeComAdapter

PREFIX = "moment:"
MOMENT_KINDS = ("text", "image", "video", "link")
MAX_IMAGES = 9
MEDIA = "wecom-media:"
MAX_TEXT_BYTES = 2_000


def moment_shape_problem(kinds: list[str]) -> str | None:
    """Why parts of these kinds cannot be one WeCom moment, or None."""
    other = sorted(set(kinds) - set(MOMENT_KINDS))
    if other:
        return f"a moment cannot carry {', '.join(other)} parts"
    images, videos, links = (kinds.count(k) for k in ("image", "video", "link"))
    if sum(1 for n in (images, videos, links) if n) > 1 or videos > 1 or links > 1:
        return "a moment is text plus up to 9 images, or one video, or one link; not a mix"
    if images > MAX_IMAGES:
        return f"a moment carries at most {MAX_IMAGES} images, not {images}"
    return None


class MomentContentError(ValueError):
    """The parts cannot be a WeCom moment; the text says why."""


def moment_content(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``text`` and ``attachments`` of an add_moment_task call."""
    texts = [str(p.get("text", "")) for p in parts if p.get("kind") == "text"]
    problem = moment_shape_problem([str(p.get("kind")) for p in parts])
    if problem:
        raise MomentContentError(problem)
    attachments: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("kind")
        if kind not in ("image", "video"):
            continue
        url = str(part.get("url", ""))
        if not url.startswith(MEDIA):
            raise MomentContentError(
                f"WeCom moments take uploaded {kind}s only: upload the {kind} to WeCom "
                f"(media/upload_attachment) and use url {MEDIA}<media_id>"
            )
        attachments.append({"msgtype": kind, kind: {"media_id": url.removeprefix(MEDIA)}})
    links = [p for p in parts if p.get("kind") == "link"]
    for link in links:
        attachments.append(
            {"msgtype": "link", "link": {"title": link["title"], "url": link["url"]}}
        )
    text = "\n".join(texts)
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise MomentContentError(f"moment text is longer than {MAX_TEXT_BYTES} bytes")
    if not text.strip() and not attachments:
        raise MomentContentError("moment is empty: nothing to publish")
    content: dict[str, Any] = {"attachments": attachments} if attachments else {}
    if text:
        content["text"] = {"content": text}
    return content


async def create_moments(
    adapter: WeComAdapter, messages: list[OutboundMessage]
) -> list[SendResult]:
    """One add_moment_task per distinct content; one result per message."""
    results: list[SendResult | None] = [None] * len(messages)
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for index, message in enumerate(messages):
        try:
            content = moment_content(message.parts)
        except MomentContentError as exc:
            results[index] = SendResult.permanent(str(exc))
            continue
        visible = message.options.get("visible_to") or {}
        key = json.dumps([content, visible], sort_keys=True, ensure_ascii=False)
        groups.setdefault(key, (content, []))[1].append(index)
    for content, indices in groups.values():
        visible = messages[indices[0]].options.get("visible_to") or {}
        members = sorted(
            {m.account_external_id for i in indices if (m := messages[i]).account_external_id}
            | set(visible.get("accounts") or [])
        )
        try:
            tag_ids = await _tag_ids(adapter, list(visible.get("tags") or []))
            body: dict[str, Any] = {**content, "visible_range": {}}
            if members:
                body["visible_range"]["sender_list"] = {"user_list": members}
            if tag_ids:
                body["visible_range"]["external_contact_list"] = {"tag_list": tag_ids}
            data = await adapter._call("externalcontact/add_moment_task", body)
        except WeComAPIError as exc:
            for i in indices:
                results[i] = exc.as_result()
            continue
        for i in indices:
            results[i] = SendResult.sent(PREFIX + str(data.get("jobid", "")))
    return [r or SendResult.permanent("no result") for r in results]


async def _tag_ids(adapter: WeComAdapter, names: list[str]) -> list[str]:
    if not names:
        return []
    catalogue = await adapter.corp_tags()
    missing = [n for n in names if n not in catalogue]
    if missing:
        raise WeComAPIError(
            f"tag {missing[0]!r} is not a WeCom corp tag; moments can only target corp tags",
            retryable=False,
        )
    return [catalogue[n] for n in names]


async def poll_moment(adapter: WeComAdapter, task_id: str, member: str) -> dict[str, TaskOutcome]:
    """``member``'s publish status of the moment, for every delivery of theirs
    (key ``"*"``): published → sent, not yet → pending."""
    jobid = task_id.removeprefix(PREFIX)
    moment_id = adapter._moment_ids.get(jobid)
    if moment_id is None:
        job = await adapter._call("externalcontact/get_moment_task_result", query={"jobid": jobid})
        if int(job.get("status") or 0) != 3:
            return {"*": TaskOutcome("pending")}
        result = job.get("result") or {}
        if int(result.get("errcode") or 0) != 0:
            reason = f"WeCom could not create the moment: errcode {result.get('errcode')}"
            return {"*": TaskOutcome("failed", reason)}
        moment_id = adapter._moment_ids[jobid] = str(result.get("moment_id"))
    statuses: dict[str, int] = {}
    cursor = ""
    while True:
        body: dict[str, Any] = {"moment_id": moment_id, "limit": 1000}
        if cursor:
            body["cursor"] = cursor
        data = await adapter._call("externalcontact/get_moment_task", body)
        for row in data.get("task_list") or []:
            statuses[str(row.get("userid"))] = int(row.get("publish_status") or 0)
        cursor = str(data.get("next_cursor") or "")
        if not cursor:
            break
    if member not in statuses:
        return {"*": TaskOutcome("failed", f"staff {member} is not among the moment's publishers")}
    if statuses[member] == 1:
        return {"*": TaskOutcome("sent", f"moment {moment_id} published by staff {member}")}
    return {"*": TaskOutcome("pending")}
