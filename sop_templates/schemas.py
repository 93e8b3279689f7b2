"""The shape of an SOP template as operators write it (YAML/JSON file, API body).

The same ``TemplateSpec`` is stored as a template's draft and frozen into each
published version, so what was validated is exactly what runs.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from audiences.segments import SEGMENT_TARGET, ExitRules, Reentry, Segment, infer_segment_kind
from sop_templates.timing import (
    Timing,
    format_duration,
    get_zone,
    in_range,
    parse_duration,
    parse_hhmm,
    parse_timing,
)

TargetKind = Literal["contact", "group"]
AnchorKind = Literal["join", "tag", "fixed"]
ExecutionMode = Literal["send", "task", "remind", "welcome", "moment"]
WelcomeFallback = Literal["task", "remind", "skip"]
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


class VideoPart(_Part):
    """A video already uploaded to WeCom (``wecom-media:<media_id>``): one per
    moment (朋友圈), or an attachment of a mass-send task."""

    kind: Literal["video"] = "video"
    url: str = Field(min_length=1)


ContentPart = Annotated[
    TextPart | ImagePart | LinkPart | MiniProgramPart | FilePart | VideoPart,
    Field(discriminator="kind"),
]
PART_KINDS = ("text", "image", "link", "miniprogram", "file", "video")

# Which fields of a part are Jinja templates (rendered per target).
RENDERED_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("url",),
    "link": ("title", "url", "description"),
    "miniprogram": ("title", "page"),
    "file": ("url", "name"),
    "video": ("url",),
}

_URLISH = re.compile(r"^(https?://|\{\{)", re.I)


def _normalize_part(value: object) -> object:
    """Allow the short forms ``{"text": "hi"}`` / ``"hi"`` / ``{"image": "https://…"}``."""
    if isinstance(value, str):
        return {"kind": "text", "text": value}
    if isinstance(value, dict) and "kind" not in value:
        for kind in PART_KINDS:
            if kind in value:
                inner = value[kind]
                if isinstance(inner, dict):
                    return {"kind": kind, **inner}
                key = "text" if kind == "text" else "url"
                return {"kind": kind, key: inner, **{k: v for k, v in value.items() if k != kind}}
    return value


class MomentAudience(BaseModel):
    """Who sees a moment (朋友圈): customers of these staff members and/or with these tags."""

    model_config = ConfigDict(extra="forbid")

    accounts: list[str] = Field(default_factory=list, max_length=10_000)
    tags: list[str] = Field(default_factory=list, max_length=10_000)


# -- outcomes (goals, variants, holdout, tracked links) ---------------------------

GOAL_EVENTS = ("link_clicked", "contact_updated")


class VariantSpec(BaseModel):
    """One A/B content variant of a touchpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, description="e.g. A, B")
    weight: float = Field(1, gt=0, le=1000, description="relative share of enrollments")
    content: list[ContentPart]

    @field_validator("content", mode="before")
    @classmethod
    def _content_short_form(cls, value: object) -> object:
        if isinstance(value, str | dict):
            value = [value]
        if isinstance(value, list):
            if not value:
                raise ValueError("a variant needs at least one content part")
            return [_normalize_part(v) for v in value]
        return value


class GoalSpec(BaseModel):
    """A conversion: a tag added, or an event (with attribute filters), within a
    window after enrollment. ``exit``: reaching it ends the SOP for the target."""

    model_config = ConfigDict(extra="forbid")

    tags_added: list[str] = Field(default_factory=list, description="any of these tags added")
    event: str | None = Field(None, description="link_clicked or contact_updated")
    where: dict[str, str] = Field(
        default_factory=dict,
        description="event attributes that must match (link_clicked: touchpoint, url; "
        "contact_updated: contact attributes)",
    )
    within: str = Field("7d", description="counted from enrollment, e.g. 7d, 48h")
    exit: bool = Field(False, description="reaching the goal exits the SOP")

    @field_validator("within")
    @classmethod
    def _within_valid(cls, value: str) -> str:
        window = parse_duration(value)
        if window <= timedelta(0) or window > timedelta(days=366):
            raise ValueError(f"within {value!r} must be between 1m and 366d")
        return format_duration(window)

    @field_validator("event")
    @classmethod
    def _event_known(cls, value: str | None) -> str | None:
        if value is not None and value not in GOAL_EVENTS:
            raise ValueError(f"goal event {value!r} is not one of {', '.join(GOAL_EVENTS)}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> GoalSpec:
        if bool(self.tags_added) == bool(self.event):
            raise ValueError("a goal is either tags_added: [...] or an event, e.g. link_clicked")
        return self

    @property
    def window(self) -> timedelta:
        return parse_duration(self.within)


class TrackingSpec(BaseModel):
    """Which links go out as tracked short links."""

    model_config = ConfigDict(extra="forbid")

    links: bool = Field(True, description="link cards")
    text_urls: bool = Field(False, description="http(s) URLs inside text parts")


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
    fallback: WelcomeFallback | None = Field(
        None,
        description="mode welcome: what to do without a usable WelcomeCode (task, remind, skip)",
    )
    visible_to: MomentAudience | None = Field(
        None, description="mode moment: staff members and/or customer tags who see it"
    )
    # -- outcomes (goals, variants, holdout, tracked links) --
    variants: list[VariantSpec] | None = Field(
        None, description="2-5 A/B content variants with weights (content is then unused)"
    )

    @field_validator("variants")
    @classmethod
    def _variants_valid(cls, value: list[VariantSpec] | None) -> list[VariantSpec] | None:
        if value is None:
            return None
        if not 2 <= len(value) <= 5:
            raise ValueError(f"a touchpoint holds 2 to 5 variants, not {len(value)}")
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique within the touchpoint")
        return value

    @field_validator("timing", mode="before")
    @classmethod
    def _timing_short_form(cls, value: object) -> object:
        return parse_timing(value)

    @model_validator(mode="before")
    @classmethod
    def _content_of_variants(cls, data: object) -> object:
        # With variants, ``content`` may be left out: the first variant's stands in
        # (channel capability checks read it).
        if isinstance(data, dict) and data.get("variants") and "content" not in data:
            first = data["variants"][0]
            if isinstance(first, dict) and "content" in first:
                return {**data, "content": first["content"]}
        return data

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

    @model_validator(mode="after")
    def _mode_options(self) -> TouchpointSpec:
        if self.fallback is not None and self.mode != "welcome":
            raise ValueError("fallback is only for mode welcome")
        if self.visible_to is not None and self.mode != "moment":
            raise ValueError("visible_to is only for mode moment")
        return self

    @property
    def options(self) -> dict[str, object]:
        """Mode settings a channel needs at dispatch (stored on the touchpoint)."""
        out: dict[str, object] = {}
        if self.mode == "welcome":
            out["fallback"] = self.fallback or "task"
        if self.visible_to is not None:
            out["visible_to"] = self.visible_to.model_dump()
        return out

    @property
    def grace_seconds(self) -> int:
        default = DEFAULT_GRACE_OFFSET if self.timing.kind == "offset" else DEFAULT_GRACE_FIXED
        return int(parse_duration(self.grace or default).total_seconds())


PolicyAction = Literal["defer", "skip"]
CapPreset = Literal["wecom_daily", "wecom_weekly", "wecom_monthly_days"]
CAP_PRESETS: tuple[str, ...] = ("wecom_daily", "wecom_weekly", "wecom_monthly_days")


class QuietHoursSpec(BaseModel):
    """No sends between ``start`` and ``end`` (local time; may wrap midnight)."""

    model_config = ConfigDict(extra="forbid")

    start: str | None = Field(None, description="local HH:MM when quiet hours begin, e.g. 22:00")
    end: str | None = Field(None, description="local HH:MM when they end (next day if earlier)")
    policy: PolicyAction = Field("defer", description="defer to the end of the window, or skip")
    off: bool = Field(False, description="no quiet hours for this template (overrides workspace)")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        # "22:00-08:00" (policy defer); false / "off": none, whatever the workspace says
        if value is False or value == "off":
            return {"off": True}
        if isinstance(value, str):
            start, sep, end = value.partition("-")
            if not sep:
                raise ValueError(f"quiet hours {value!r} are not like 22:00-08:00")
            return {"start": start.strip(), "end": end.strip()}
        return value

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        return None if value is None else parse_hhmm(value).strftime("%H:%M")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursSpec:
        if self.off:
            if self.start or self.end:
                raise ValueError("quiet hours are either off or have a start and an end")
            return self
        if self.start is None or self.end is None:
            raise ValueError("quiet hours need a start and an end, e.g. 22:00 and 08:00")
        if self.start == self.end:
            raise ValueError("quiet hours start and end are the same time; remove quiet_hours")
        return self


class FrequencyCapSpec(BaseModel):
    """At most so many deliveries per contact (or group) across all templates.

    Presets follow WeCom's mass-send rules: ``wecom_daily`` one per day,
    ``wecom_weekly`` seven per week, ``wecom_monthly_days`` as many per calendar
    month as the month has days. Custom: ``{max: 2, per: "1d"}`` (a sliding window).
    """

    model_config = ConfigDict(extra="forbid")

    preset: CapPreset | None = None
    max: int | None = Field(None, ge=1, le=10_000)
    per: str | None = Field(None, description="sliding window, e.g. 1d, 12h, 7d")
    policy: PolicyAction = Field("defer", description="defer to when the cap allows, or skip")
    off: bool = Field(False, description="no cap for this template (overrides workspace)")

    @model_validator(mode="before")
    @classmethod
    def _preset_name(cls, value: object) -> object:
        if value is False or value == "off":
            return {"off": True}
        if isinstance(value, str):
            if value not in CAP_PRESETS:
                raise ValueError(
                    f"unknown frequency cap {value!r}; use one of {', '.join(CAP_PRESETS)} "
                    "or {max: N, per: '1d'}"
                )
            return {"preset": value}
        return value

    @field_validator("per")
    @classmethod
    def _per_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        window = parse_duration(value)
        if window < timedelta(minutes=1) or window > timedelta(days=366):
            raise ValueError(f"per {value!r} must be between 1m and 366d")
        return format_duration(window)

    @model_validator(mode="after")
    def _one_kind(self) -> FrequencyCapSpec:
        custom = self.max is not None or self.per is not None
        if self.off:
            if custom or self.preset is not None:
                raise ValueError("a frequency cap is either off or has a preset or {max, per}")
            return self
        if self.preset is not None and custom:
            raise ValueError("a frequency cap is either a preset or {max, per}, not both")
        if self.preset is None and (self.max is None or self.per is None):
            raise ValueError(
                "a custom frequency cap needs both max and per, e.g. {max: 1, per: 1d}"
            )
        return self


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
    segment: Segment | None = Field(
        None, description="who enrolls automatically (see audiences.segments)"
    )
    exit: ExitRules = Field(
        default_factory=ExitRules, description="when an enrolled target leaves (退出条件)"
    )
    reentry: Reentry = Field(
        "never", description="enroll a target again: never / after_finish / always (restart)"
    )
    touchpoints: list[TouchpointSpec] = Field(min_length=1)
    exclusive_with: list[int] = Field(
        default_factory=list,
        description="ids of other SOPs this one excludes both ways (互斥): a target "
        "enrolled in one of them is not enrolled in this one, and the reverse",
    )
    # None: the workspace default applies; false / "off": none for this template.
    quiet_hours: QuietHoursSpec | None = Field(
        None, description="e.g. {start: '22:00', end: '08:00', policy: defer|skip}, or off"
    )
    frequency_cap: FrequencyCapSpec | None = Field(
        None, description="wecom_daily | wecom_weekly | wecom_monthly_days | {max, per} | off"
    )
    # -- outcomes (goals, variants, holdout, tracked links) --
    goal: GoalSpec | None = Field(
        None, description="what counts as a conversion: {tags_added: [..] | event, within: 7d}"
    )
    holdout: float = Field(
        0, ge=0, le=50, description="percent of enrollments held out as a control group (0-50)"
    )
    tracking: TrackingSpec | None = Field(
        None, description="tracked short links: {links: true, text_urls: false}"
    )

    @field_validator("holdout", mode="before")
    @classmethod
    def _holdout_percent(cls, value: object) -> object:
        if isinstance(value, str):  # "10%"
            text = value.strip().removesuffix("%").strip()
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"holdout {value!r} is not a percentage like 10%") from None
        return value

    @field_validator("exclusive_with")
    @classmethod
    def _exclusive_ids(cls, value: list[int]) -> list[int]:
        if any(v <= 0 for v in value):
            raise ValueError("exclusive_with lists SOP ids (positive whole numbers)")
        return sorted(set(value))

    @field_validator("start_at")
    @classmethod
    def _start_in_range(cls, value: datetime | None) -> datetime | None:
        return None if value is None else in_range(value, "start_at")

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        get_zone(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _segment_kind(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("segment"), dict):
            target = data.get("target", "contact")
            data = {**data, "segment": infer_segment_kind(data["segment"], target)}
        return data

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
        if self.segment is not None:
            selects = SEGMENT_TARGET[self.segment.kind]
            if selects != self.target:
                raise ValueError(
                    f"a {self.segment.kind} segment selects {selects}s; "
                    f"this template targets {self.target}s"
                )
            if self.segment.kind == "new_friends" and self.anchor != "join":
                raise ValueError(
                    "a new_friends segment needs anchor 'join' (the friend-added time)"
                )
        return self

    @property
    def has_cron(self) -> bool:
        return any(t.timing.kind == "cron" for t in self.touchpoints)
