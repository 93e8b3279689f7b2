"""Audience events: the things that change sopbot's picture of the community.

``friend_added``, ``friend_deleted``, ``contact_updated``, ``tag_added``,
``tag_removed``, ``tag_group_set``, ``group_created``, ``group_updated``, ``group_dissolved``,
``group_member_joined`` and ``group_member_left`` arrive through ``POST
/api/events``, WeCom callbacks, the CSV import, the contact/group forms and the
CLI (and from sopbot itself, e.g. an exit action that adds a tag). Each may
carry an idempotency ``id``. ``link_clicked`` comes only from sopbot's own
short links (:class:`LinkClicked`).

This module says what an event is: its shape, and how a raw one is validated
(``parse_event``). Applying events to the tables is ``audiences.applying``; the
one unit of work every source goes through, SOP reactions included, is
``audiences.changes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from audiences.segments import MAX_TAG_LENGTH
from sopbot.clock import ensure_utc, get_zone

# ------------------------------------------------------------------------ schemas


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2027-03-01T21:30:00+08:00")
    return ensure_utc(value)


def _clean_tags(value: list[str]) -> list[str]:
    out = []
    for raw in value:
        name = str(raw).strip()
        if not name:
            raise ValueError("a tag name is empty")
        if len(name) > MAX_TAG_LENGTH:
            raise ValueError(f"tag name {name[:20]!r}… is longer than {MAX_TAG_LENGTH} characters")
        out.append(name)
    return list(dict.fromkeys(out))


class BaseEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="idempotency id: an event with an id already seen changes nothing",
    )
    occurred_at: datetime | None = Field(None, description="when it happened (default: now)")

    @field_validator("occurred_at")
    @classmethod
    def _occurred_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @model_validator(mode="before")
    @classmethod
    def _singular_tag(cls, value: Any) -> Any:
        # {"tag": "purchased"} is the short form of {"tags": ["purchased"]}
        if isinstance(value, dict) and "tag" in value and "tags" not in value:
            value = dict(value)
            value["tags"] = [value.pop("tag")]
        return value


class _ContactRef(BaseEvent):
    account: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="external id of the owning account; omitted: every contact with this external id",
    )
    external_id: str = Field(min_length=1, max_length=128)


class FriendAdded(_ContactRef):
    """A contact became a friend of an account (加好友); anchors new-friend SOPs."""

    kind: Literal["friend_added"]
    account: str = Field(min_length=1, max_length=128)  # type: ignore[assignment]
    name: str = Field("", max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict)
    timezone: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, value: list[str]) -> list[str]:
        return _clean_tags(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _valid_zone(value)


class FriendDeleted(_ContactRef):
    """The friendship ended: deleted by staff (del_external_contact) or by the
    contact (del_follow_user). The contact becomes ``deleted``."""

    kind: Literal["friend_deleted"]
    account: str = Field(min_length=1, max_length=128)  # type: ignore[assignment]
    by: Literal["staff", "contact"] = "staff"


class ContactUpdated(_ContactRef):
    """Name, attributes (merged; ``null`` removes one), time zone or status changed."""

    kind: Literal["contact_updated"]
    name: str | None = Field(None, max_length=200)
    attributes: dict[str, Any] | None = None
    timezone: str | None = None
    status: Literal["active", "deleted", "blocked", "unsubscribed"] | None = None
    joined_at: datetime | None = Field(None, description="only used when creating (create_missing)")
    create_missing: bool = Field(
        False, description="create the contact if unknown (it does not count as a new friend)"
    )

    @field_validator("joined_at")
    @classmethod
    def _joined_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _valid_zone(value)


class TagAdded(_ContactRef):
    kind: Literal["tag_added"]
    target: Literal["contact", "group"] = "contact"
    tags: list[str] = Field(min_length=1)
    tag_group: str | None = Field(
        None, max_length=100, description="tag group (标签组) of new tags"
    )

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, value: list[str]) -> list[str]:
        return _clean_tags(value)


class TagRemoved(_ContactRef):
    kind: Literal["tag_removed"]
    target: Literal["contact", "group"] = "contact"
    tags: list[str] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, value: list[str]) -> list[str]:
        return _clean_tags(value)


class TagGroupSet(BaseEvent):
    """Tags moved into a tag group (标签组), or out of any (``group`` empty); a
    group is renamed by moving all its tags. Tags not known yet are created in
    the group (a WeCom tag catalogue names tags nobody carries yet). Changes no
    contact or group chat, so no SOP reacts."""

    kind: Literal["tag_group_set"]
    tags: list[str] = Field(min_length=1)
    group: str | None = Field(None, max_length=100, description="the tag group; empty: none")

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, value: list[str]) -> list[str]:
        return _clean_tags(value)

    @field_validator("group")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        return (value or "").strip() or None


class _GroupRef(BaseEvent):
    external_id: str = Field(min_length=1, max_length=128, description="the group chat's id")


class GroupCreated(_GroupRef):
    """A group chat was created or sopbot's account joined it (anchors group SOPs)."""

    kind: Literal["group_created"]
    name: str = Field("", max_length=200)
    owner: str | None = Field(None, min_length=1, max_length=128)
    member_count: int | None = Field(None, ge=0)
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, value: list[str]) -> list[str]:
        return _clean_tags(value)


class GroupUpdated(_GroupRef):
    kind: Literal["group_updated"]
    name: str | None = Field(None, max_length=200)
    owner: str | None = Field(None, min_length=1, max_length=128)
    member_count: int | None = Field(None, ge=0)
    attributes: dict[str, Any] | None = None
    create_missing: bool = False


class GroupDissolved(_GroupRef):
    kind: Literal["group_dissolved"]


class _MemberChange(_GroupRef):
    members: list[str] = Field(default_factory=list, description="member ids, if known")
    count: int | None = Field(
        None, ge=0, description="how many joined/left (default: len(members) or 1)"
    )
    member_count: int | None = Field(None, ge=0, description="the new total, if known")
    create_missing: bool = False

    @property
    def delta(self) -> int:
        if self.count is not None:
            return self.count
        return len(self.members) or 1


class GroupMemberJoined(_MemberChange):
    kind: Literal["group_member_joined"]


class GroupMemberLeft(_MemberChange):
    kind: Literal["group_member_left"]


class LinkClicked(BaseEvent):
    """A tracked short link was opened (``scheduler.flows.clicks`` records these
    from the redirect route; not accepted by ``POST /api/events``). Every one is
    written to ``link_clicks``; a person's click (not ``bot``) is also a fact
    about the target that segments (``clicked``), exit conditions and goals read.
    The target is named by id: the link row knows it, and a contact deleted
    since still has its click recorded."""

    kind: Literal["link_clicked"] = "link_clicked"
    target: Literal["contact", "group"] = "contact"
    target_id: int
    token: str = Field(max_length=32)
    delivery_id: int
    enrollment_id: int
    template_id: int
    touchpoint_name: str = Field(max_length=100)
    url: str = ""
    user_agent: str = Field("", max_length=500)
    bot: bool = False
    repeat: bool = False


AudienceEvent = Annotated[
    FriendAdded
    | FriendDeleted
    | ContactUpdated
    | TagAdded
    | TagRemoved
    | TagGroupSet
    | GroupCreated
    | GroupUpdated
    | GroupDissolved
    | GroupMemberJoined
    | GroupMemberLeft,
    Field(discriminator="kind"),
]
EVENT_KINDS = (
    "friend_added",
    "friend_deleted",
    "contact_updated",
    "tag_added",
    "tag_removed",
    "tag_group_set",
    "group_created",
    "group_updated",
    "group_dissolved",
    "group_member_joined",
    "group_member_left",
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AudienceEvent)


def _valid_zone(value: str | None) -> str | None:
    if value is None:
        return None
    get_zone(value)
    return value


@dataclass
class ItemError:
    """One problem with one event of a batch (or one row of an import)."""

    index: int
    loc: str
    msg: str


class InvalidEvent(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))


def parse_event(data: Any) -> Any:
    """Validate one event; ``InvalidEvent.problems`` names each bad field."""
    if not isinstance(data, dict):
        raise InvalidEvent([("event", "an event is a JSON object with a 'kind'")])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidEvent([_problem(err, data) for err in exc.errors()]) from None


def _problem(err: Any, data: dict[str, Any]) -> tuple[str, str]:
    kinds = ", ".join(EVENT_KINDS)
    if err["type"] == "union_tag_not_found":
        return "kind", f"missing; every event needs a kind, one of: {kinds}"
    if err["type"] == "union_tag_invalid":
        return "kind", f"unknown event kind {data.get('kind')!r}; expected one of: {kinds}"
    loc = list(err["loc"])
    if loc and loc[0] == data.get("kind"):
        loc = loc[1:]
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    message = {
        "missing": "field required",
        "extra_forbidden": "unknown field",
    }.get(err["type"], str(err["msg"]).removeprefix("Value error, "))
    return text or "event", message
