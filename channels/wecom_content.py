"""What a WeCom mass-send task says: the ``text`` and ``attachments`` of an
``add_msg_template`` call built from a message's parts, within WeCom's limits,
and the app message that tells a staff member what to send (``remind``).

A message that cannot be expressed raises ``ContentError`` with a reason an
operator can act on; the adapters record it as a permanent failure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels.base import OutboundMessage

MAX_TASK_TEXT_BYTES = 4_000
MAX_ATTACHMENTS = 9


class ContentError(ValueError):
    """A message cannot be expressed as a WeCom mass-send; the text says why."""


def build_task_content(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``text``/``attachments`` of an add_msg_template call for these parts.

    Raises ``ContentError`` (a ``ValueError``) with a reason an operator can act on.
    """
    texts: list[str] = []
    attachments: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("kind")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image":
            attachments.append(_image_attachment(part))
        elif kind == "link":
            attachments.append(_link_attachment(part))
        elif kind == "miniprogram":
            attachments.append(_miniprogram_attachment(part))
        elif kind == "file":
            attachments.append(_file_attachment(part))
        elif kind == "video":
            attachments.append(_video_attachment(part))
        else:
            raise ContentError(f"WeCom cannot send part kind {kind!r}")
    text = "\n".join(texts)
    size = len(text.encode("utf-8"))
    if size > MAX_TASK_TEXT_BYTES:
        raise ContentError(
            f"text is {size} bytes; WeCom mass sends allow at most {MAX_TASK_TEXT_BYTES} bytes"
        )
    if len(attachments) > MAX_ATTACHMENTS:
        raise ContentError(
            f"{len(attachments)} attachments; WeCom mass sends allow at most {MAX_ATTACHMENTS}"
        )
    if not text.strip() and not attachments:
        raise ContentError("message is empty: nothing to send")
    content: dict[str, Any] = {}
    if text:
        content["text"] = {"content": text}
    if attachments:
        content["attachments"] = attachments
    return content


def _image_attachment(part: dict[str, Any]) -> dict[str, Any]:
    # WeCom documents pic_url as a link obtained from its "upload image" API;
    # a media_id (temporary material) also works when the renderer has one.
    if part.get("media_id"):
        return {"msgtype": "image", "image": {"media_id": part["media_id"]}}
    if not part.get("url"):
        raise ContentError("image part has no url")
    return {"msgtype": "image", "image": {"pic_url": part["url"]}}


def _link_attachment(part: dict[str, Any]) -> dict[str, Any]:
    if not part.get("title") or not part.get("url"):
        raise ContentError("link part needs a title and a url")
    link: dict[str, Any] = {"title": part["title"], "url": part["url"]}
    if part.get("image_url"):
        link["picurl"] = part["image_url"]
    if part.get("description"):
        link["desc"] = part["description"]
    return {"msgtype": "link", "link": link}


def _miniprogram_attachment(part: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in ("appid", "page", "title") if not part.get(f)]
    if missing:
        raise ContentError(f"mini-program part is missing {', '.join(missing)}")
    if not part.get("media_id"):
        raise ContentError(
            "WeCom mini-program cards need a cover media_id; upload the cover image "
            "to WeCom (media/upload) first"
        )
    return {
        "msgtype": "miniprogram",
        "miniprogram": {
            "title": part["title"],
            "pic_media_id": part["media_id"],
            "appid": part["appid"],
            "page": part["page"],
        },
    }


def _file_attachment(part: dict[str, Any]) -> dict[str, Any]:
    if not part.get("media_id"):
        raise ContentError(
            "WeCom file attachments need a media_id; a media upload (media/upload) is "
            "required, a URL alone cannot be sent"
        )
    return {"msgtype": "file", "file": {"media_id": part["media_id"]}}


def _video_attachment(part: dict[str, Any]) -> dict[str, Any]:
    media_id = str(part.get("url", "")).removeprefix("wecom-media:")
    if not media_id or media_id == part.get("url"):
        raise ContentError(
            "WeCom videos need a media_id: upload the video to WeCom "
            "(media/upload_attachment) and use url wecom-media:<media_id>"
        )
    return {"msgtype": "video", "video": {"media_id": media_id}}


def task_body(
    sender: str, target_kind: str, target_ids: list[str], content: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"sender": sender, "allow_select": False}
    if target_kind == "group":
        # WeCom (doc 92135) names the group id list "chat_id_list", max 2000 per call.
        body["chat_type"] = "group"
        body["chat_id_list"] = target_ids
    else:
        body["chat_type"] = "single"
        body["external_userid"] = target_ids
    body.update(content)
    return body


def remind_text(message: OutboundMessage) -> str:
    """The app message telling a staff member what to send to whom."""
    if message.target_kind == "staff":  # a digest of tasks: its text is the whole message
        return "\n".join(str(p.get("text", "")) for p in message.parts)
    name = message.target_name or message.target_external_id
    where = "请发送到群" if message.target_kind == "group" else "请发送给"
    lines = [f"{where} {name}（{message.target_external_id}）："]
    for part in message.parts:
        kind = part.get("kind")
        if kind == "text":
            lines.append(str(part.get("text", "")))
        elif kind == "image":
            lines.append(f"[图片] {part.get('url', '')}")
        elif kind == "link":
            lines.append(f"[链接] {part.get('title', '')} {part.get('url', '')}")
        elif kind == "miniprogram":
            lines.append(f"[小程序] {part.get('title', '')}（{part.get('page', '')}）")
        elif kind == "file":
            lines.append(f"[文件] {part.get('name') or ''} {part.get('url', '')}".rstrip())
        elif kind == "video":
            lines.append(f"[视频] {part.get('url', '')}")
        else:
            lines.append(f"[{kind}]")
    return "\n".join(line.rstrip() for line in lines)
