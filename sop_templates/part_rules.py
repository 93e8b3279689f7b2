"""Rules for the addresses in message parts, checked when a template is
validated, saved and published (``checks.publish_problems``): links and images
are ``https://`` addresses (or materials of the library, ``/materials/...``;
an image may be ``wecom-media:<media_id>`` on WeCom channels, for moments, and
a video must be one),
a mini-program AppID is ``wx`` and 16 hex characters, a page path is relative
(``pages/index/index``, no leading ``/``), and WeCom's channels need the page
path to end in ``.html`` (their API says so).

Values with ``{{ ... }}`` placeholders are rendered per recipient and are not
checked here. Messages are read by ``api.error_codes`` into codes.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from sop_templates.schemas import TemplateSpec

APPID = re.compile(r"^wx[0-9a-f]{16}$")
PAGE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-./]*(?:\?[^\s#]*)?$")
MATERIAL_PREFIX = "/materials/"
# part kind → fields holding an address
URL_FIELDS = {
    "image": ("url",),
    "link": ("url", "image_url"),
    "miniprogram": ("pic_url",),
    "file": ("url",),
    "video": ("url",),
}
WECOM_ADAPTERS = ("wecom", "wecom_group_bot")
WECOM_MEDIA = "wecom-media:"  # an image already uploaded to WeCom (moments)


def _is_media(value: str) -> bool:
    return value.startswith(WECOM_MEDIA) and len(value) > len(WECOM_MEDIA)


def is_https_url(value: str) -> bool:
    if value.startswith(MATERIAL_PREFIX):
        return True
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.netloc) and " " not in value


def part_problems(spec: TemplateSpec, adapter: str | None = None) -> list[tuple[str, str]]:
    """``(location, message)`` for every address that cannot be sent as it is."""
    problems: list[tuple[str, str]] = []
    for i, touchpoint in enumerate(spec.touchpoints):
        for j, part in enumerate(touchpoint.content):
            raw: dict[str, Any] = part.model_dump()
            kind = raw.get("kind", "text")
            where = f"touchpoints[{i}].content[{j}]"
            for name in URL_FIELDS.get(kind, ()):
                value = str(raw.get(name) or "").strip()
                if kind == "video":  # WeCom takes a video only as uploaded media
                    if value and "{{" not in value and not _is_media(value):
                        problems.append(
                            (f"{where}.{name}", f"video {value!r} is not a WeCom media id")
                        )
                    continue
                if (
                    kind == "image"
                    and value.startswith(WECOM_MEDIA)
                    and len(value) > len(WECOM_MEDIA)
                    and (adapter is None or adapter in WECOM_ADAPTERS)
                ):
                    continue
                if value and "{{" not in value and not is_https_url(value):
                    problems.append((f"{where}.{name}", f"url {value!r} is not an https address"))
            if kind != "miniprogram":
                continue
            appid = str(raw.get("appid") or "").strip()
            if appid and "{{" not in appid and not APPID.match(appid):
                problems.append((f"{where}.appid", f"appid {appid!r} is not wx and 16 hex digits"))
            page = str(raw.get("page") or "").strip()
            if page and "{{" not in page:
                path = page.split("?", 1)[0]
                if not PAGE.match(page) or (
                    adapter in WECOM_ADAPTERS and not path.endswith(".html")
                ):
                    problems.append((f"{where}.page", f"page {page!r} is not a page path"))
    return problems
