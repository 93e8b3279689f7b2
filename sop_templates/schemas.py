"""The shape of an SOP template as operators write it (YAML/JSON file, API body).

The same ``TemplateSpec`` is stored as a template's draft and frozen into each
published version, so what was validated is exactly what runs.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sop_templates.timing import Timing, format_duration, get_zone, parse_duration, parse_timing

TargetKind = Literal["contact", "group"]
AnchorKind = Literal["join", "tag", "fixed"]
ExecutionMode = Literal["send", "task", "remind"]
PastPolicy = Literal["skip", "send"]

DEFAULT_GRACE_OFFSET = "6h"
DEFAULT_GRACE_FIXED = "1h"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    kind: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=20_000)


class ImagePart(_Part):
    kind: Literal["image"] = "image"
    url: str = Field(min_length=1)


class LinkPart(_Part):
    kind: Literal["link"] = "link"
    title: str = Field(min_length=1)
    url: str = Field(min_length=1)
    description: str | None = None
    image_url: str | None = None


class MiniProgramPart(_Part):
    kind: Literal["miniprogram"] = "miniprogram"
    appid: str = Field(min_length=1)
    page: str = Field(min_length=1)
    title: str = Field(min_length=1)
    pic_url: str | None = None
    media_id: str | None = None


class FilePart(_Part):
    kind: Literal["file"] = "file"
    url: str = Field(min_length=1)
    name: str | None = None


ContentPart = Annotated[
    TextPart | ImagePart | LinkPart | MiniProgramPart | FilePart, Field(discriminator="kind")
]

# Which fields of a part are Jinja templates (rendered per target).
RENDERED_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("url",),
    "link": ("title", "url", "description"),
    "miniprogram": ("title", "page"),
    "file": ("url", "name"),
}

_URLISH = re.compile(r"^(https?://|\{\{)", re.I)


def _normalize_part(value: object) -> object:
    """Allow the short forms ``{"text": "hi"}`` / ``"hi"`` / ``{"image": "https://…"}``."""
    if isinstance(value, str):
        return {"kind": "text", "text": value}
    if isinstance(value, dict) and "kind" not in value:
        for kind in ("text", "image", "link", "miniprogram", "file"):
            if kind in value:
                inner = value[kind]
                if isinstance(inner, dict):
                    return {"kind": kind, **inner}
                key = "text" if kind == "text" else "url"
                return {"kind": kind, key: inner, **{k: v for k, v in value.items() if k != kind}}
    return value


class TouchpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="unique within the template")
    timing: Timing
    content: list[ContentPart] = Field(description="one or more parts, sent in order")
    mode: ExecutionMode = Field("send", description="send / task (staff confirm) / remind")
    grace: str | None = Field(
        None, description="how late it may still go out (default 6h offsets, 1h otherwise)"
    )
    past_policy: PastPolicy = Field(
        "skip", description="a day/at time already past at enrollment: skip (recorded) or send"
    )

    @field_validator("timing", mode="before")
    @classmethod
    def _timing_short_form(cls, value: object) -> object:
        return parse_timing(value)

    @field_validator("content", mode="before")
    @classmethod
    def _content_short_form(cls, value: object) -> object:
        if isinstance(value, str | dict):
            value = [value]
        if isinstance(value, list):
            return [_normalize_part(v) for v in value]
        return value

    @field_validator("content")
    @classmethod
    def _content_not_empty(cls, value: list[ContentPart]) -> list[ContentPart]:
        if not value:
            raise ValueError("content is empty: add at least one text, image, link, ... part")
        return value

    @field_validator("grace")
    @classmethod
    def _grace_valid(cls, value: str | None) -> str | None:
        return None if value is None else format_duration(parse_duration(value))

    @property
    def grace_seconds(self) -> int:
        default = DEFAULT_GRACE_OFFSET if self.timing.kind == "offset" else DEFAULT_GRACE_FIXED
        return int(parse_duration(self.grace or default).total_seconds())


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    target: TargetKind = Field("contact", description="contact (客户) or group (客户群)")
    timezone: str = Field("Asia/Shanghai", description="IANA zone for day/at/cron timings")
    anchor: AnchorKind = Field("join", description="join time, tag time or a fixed start")
    anchor_tag: str | None = Field(None, description="the tag whose time anchors (anchor=tag)")
    start_at: datetime | None = Field(None, description="fixed start (anchor=fixed), local time")
    channel: str = Field("mock", description="channel instance that delivers this SOP")
    segment: dict[str, object] | None = Field(
        None, description="who enrolls automatically (see audiences)"
    )
    touchpoints: list[TouchpointSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        get_zone(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TemplateSpec:
        names = [t.name for t in self.touchpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"touchpoint names must be unique; repeated: {', '.join(dupes)}")
        if self.anchor == "fixed" and self.start_at is None:
            raise ValueError("anchor 'fixed' needs start_at (the fixed start date-time)")
        if self.anchor == "tag" and not self.anchor_tag:
            raise ValueError("anchor 'tag' needs anchor_tag (the tag whose time counts)")
        return self

    @property
    def has_cron(self) -> bool:
        return any(t.timing.kind == "cron" for t in self.touchpoints)
