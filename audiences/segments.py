"""Segments: who a template enrolls by itself (人群 / 客户分群).

Three kinds, matching the three SOP scenarios:

* ``new_friends`` — contacts added as friends after the template goes live,
  optionally only of some accounts and/or with some attributes;
* ``tagged`` — contacts whose tags satisfy a tag expression (AND / OR / NOT),
  plus account and attribute filters;
* ``groups`` — group chats by tag expression, name pattern and owner account.

A segment is evaluated two ways that must agree: in Python on one target's facts
(``Segment.matches``, here, used when an event changes a few targets) and in SQL
over the whole table (``audiences.segment_queries``, used when a template is
published and for previews). ``tests/audiences/test_segments.py`` checks both on
the same cases.

The per-template membership rules (exit conditions, re-entry policy) live here
too because they are expressed in the same vocabulary (tags, segment, status).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from audiences.clicks import ClickCondition, ClickKey
from audiences.tag_expressions import MAX_TAG_LENGTH, TagExpr, parse_tag_expr, tag_name

__all__ = ["MAX_TAG_LENGTH", "TagExpr", "parse_tag_expr"]

TargetKind = Literal["contact", "group"]


# --------------------------------------------------------------------- attributes

Scalar = str | int | float | bool
_ATTR_KEY = re.compile(r'^[^"\\]{1,64}$')


def _kind_of(value: object) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return None


class AttributeFilter(BaseModel):
    """A condition on one attribute. Short forms: a scalar means ``eq``, a list ``in``.

    Values compare by type: ``"3"`` (text) never equals ``3`` (number). Ordering
    (``gt``/``gte``/``lt``/``lte``) is for numbers only.
    """

    model_config = ConfigDict(extra="forbid")

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in")
    not_in: list[Scalar] | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: object) -> object:
        if isinstance(value, str | int | float | bool):
            return {"eq": value}
        if isinstance(value, list):
            return {"in": value}
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> AttributeFilter:
        if not self.conditions():
            raise ValueError("an attribute filter needs a condition: eq, ne, in, not_in, gt, ...")
        for name in ("gt", "gte", "lt", "lte"):
            value = getattr(self, name)
            if value is not None and isinstance(value, bool):
                raise ValueError(f"'{name}' compares numbers, not true/false")
        return self

    @model_serializer
    def _compact(self) -> dict[str, Any]:
        return dict(self.conditions())

    def conditions(self) -> list[tuple[str, Any]]:
        out = []
        for name in ("eq", "ne", "in_", "not_in", "gt", "gte", "lt", "lte", "exists"):
            value = getattr(self, name)
            if value is not None:
                out.append((name.rstrip("_"), value))
        return out

    def matches(self, present: bool, value: Any) -> bool:
        def equal(expected: Scalar) -> bool:
            return present and _kind_of(value) == _kind_of(expected) and value == expected

        number = value if present and _kind_of(value) == "number" else None
        for op, arg in self.conditions():
            ok = {
                "eq": lambda a: equal(a),
                "ne": lambda a: not equal(a),
                "in": lambda a: any(equal(x) for x in a),
                "not_in": lambda a: not any(equal(x) for x in a),
                "gt": lambda a: number is not None and number > a,
                "gte": lambda a: number is not None and number >= a,
                "lt": lambda a: number is not None and number < a,
                "lte": lambda a: number is not None and number <= a,
                "exists": lambda a: (present and value is not None) == a,
            }[op](arg)
            if not ok:
                return False
        return True


def _check_attr_keys(value: dict[str, AttributeFilter]) -> dict[str, AttributeFilter]:
    for key in value:
        if not _ATTR_KEY.match(key):
            raise ValueError(f"attribute name {key!r} must be 1–64 characters without quotes")
    return value


# ----------------------------------------------------------------------- segments


@dataclass
class TargetFacts:
    """What a segment looks at on one contact or group."""

    account: str | None  # the owning account's external id
    name: str
    attributes: Mapping[str, Any]
    tags: Collection[str]
    # a person's last click per tracked link's (template, step), and the instant
    # "the last N days" count back from
    clicks: Mapping[ClickKey, datetime] = dataclasses.field(default_factory=dict)
    now: datetime | None = None


class _Segment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, AttributeFilter] = Field(
        default_factory=dict,
        description="attribute filters, e.g. {city: 上海, child_age: {lte: 3}}",
    )
    clicked: ClickCondition | None = Field(
        None, description="clicked a tracked link in the last N days, e.g. {days: 7}"
    )

    @field_validator("attributes")
    @classmethod
    def _attribute_keys(cls, value: dict[str, AttributeFilter]) -> dict[str, AttributeFilter]:
        return _check_attr_keys(value)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, value: object) -> object:
        # Operators write the singular: {tag: store}, {account: staff_1}.
        if isinstance(value, dict):
            value = dict(value)
            for short, full in (("tag", "tags"), ("account", "accounts"), ("owner", "owners")):
                if short in value and full not in value:
                    item = value.pop(short)
                    value[full] = [item] if full != "tags" and isinstance(item, str) else item
        return value

    def matches(self, facts: TargetFacts) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def clicks_match(self, facts: TargetFacts) -> bool:
        return self.clicked is None or self.clicked.matches(facts.clicks, facts.now)

    def tag_names(self) -> set[str]:
        tags = getattr(self, "tags", None)
        return tags.names() if tags is not None else set()


def _attrs_match(filters: Mapping[str, AttributeFilter], attributes: Mapping[str, Any]) -> bool:
    return all(f.matches(k in attributes, attributes.get(k)) for k, f in filters.items())


class NewFriendsSegment(_Segment):
    """Contacts added as friends after the template goes live (新好友)."""

    kind: Literal["new_friends"] = "new_friends"
    accounts: list[str] = Field(default_factory=list, description="only friends of these accounts")

    def matches(self, facts: TargetFacts) -> bool:
        if self.accounts and facts.account not in self.accounts:
            return False
        return _attrs_match(self.attributes, facts.attributes) and self.clicks_match(facts)


class TaggedSegment(_Segment):
    """Contacts whose tags satisfy an expression (客户标签)."""

    kind: Literal["tagged"] = "tagged"
    tags: TagExpr
    accounts: list[str] = Field(default_factory=list)

    def matches(self, facts: TargetFacts) -> bool:
        if self.accounts and facts.account not in self.accounts:
            return False
        return (
            self.tags.matches(facts.tags)
            and _attrs_match(self.attributes, facts.attributes)
            and self.clicks_match(facts)
        )


class GroupSegment(_Segment):
    """Group chats by tag expression, name pattern and owner (客户群)."""

    kind: Literal["groups"] = "groups"
    tags: TagExpr | None = None
    name_pattern: str | None = Field(
        None, min_length=1, max_length=200, description="glob on the group name: *店*, 门店?群"
    )
    owners: list[str] = Field(default_factory=list, description="owner account external ids")

    def matches(self, facts: TargetFacts) -> bool:
        if self.owners and facts.account not in self.owners:
            return False
        if self.tags is not None and not self.tags.matches(facts.tags):
            return False
        if self.name_pattern and not fnmatch.fnmatchcase(
            facts.name.lower(), self.name_pattern.lower()
        ):
            return False
        return _attrs_match(self.attributes, facts.attributes) and self.clicks_match(facts)


SEGMENT_KINDS: dict[str, type[_Segment]] = {
    "new_friends": NewFriendsSegment,
    "tagged": TaggedSegment,
    "groups": GroupSegment,
}


def _validate_segment(value: object) -> _Segment:
    # By hand rather than a pydantic discriminator so error locations read
    # ``segment.tags``, not ``segment.tagged.tags``.
    if isinstance(value, _Segment):
        return value
    if not isinstance(value, dict):
        raise ValueError("a segment is an object such as {kind: tagged, tags: vip}")
    kind = value.get("kind")
    model = SEGMENT_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise PydanticCustomError(
            "segment_kind",
            "unknown segment kind '{kind}'; use new_friends, tagged or groups",
            {"kind": kind},
        )
    return model.model_validate(value)


def _dump_segment(value: _Segment, info: SerializationInfo) -> dict[str, Any]:
    return value.model_dump(mode=info.mode)


Segment = Annotated[
    NewFriendsSegment | TaggedSegment | GroupSegment,
    PlainValidator(_validate_segment),
    PlainSerializer(_dump_segment),
    WithJsonSchema(
        {
            "type": "object",
            "description": "kind: new_friends | tagged | groups, with tags, accounts/owners, "
            "name_pattern and attributes filters",
            "examples": [{"kind": "tagged", "tags": "spring-class-2027 and not purchased"}],
        }
    ),
]
SEGMENT_TARGET: dict[str, TargetKind] = {
    "new_friends": "contact",
    "tagged": "contact",
    "groups": "group",
}


def infer_segment_kind(segment: object, target: object) -> object:
    """Fill in ``kind`` of a segment written without one, from the template's target:
    a group template means ``groups``; a contact template with tags ``tagged``,
    otherwise ``new_friends``."""
    if not isinstance(segment, dict) or "kind" in segment:
        return segment
    if target == "group":
        kind = "groups"
    else:
        kind = "tagged" if ("tags" in segment or "tag" in segment) else "new_friends"
    return {"kind": kind, **segment}


# ---------------------------------------------------------------- template rules

Reentry = Literal["never", "after_finish", "always"]


class ExitRules(BaseModel):
    """When an enrolled target leaves a template (退出条件); its pending deliveries
    are then cancelled with the reason."""

    model_config = ConfigDict(extra="forbid")

    tags_added: list[str] = Field(
        default_factory=list, description="leave when one of these tags is added (e.g. purchased)"
    )
    tags_removed: list[str] = Field(
        default_factory=list, description="leave when one of these tags is removed"
    )
    on_inactive: bool = Field(
        True,
        description="leave when the contact is deleted/blocked/unsubscribed or the group dissolved",
    )
    on_segment_mismatch: bool = Field(
        True, description="leave when it no longer matches the segment"
    )
    add_tags: list[str] = Field(
        default_factory=list,
        description="tags sopbot applies to the target when it leaves (they trigger other SOPs)",
    )
    clicked: bool | list[str] = Field(
        False,
        description="leave when the person clicks a tracked link of this SOP "
        "(true: any step; a list: of these steps)",
    )

    @field_validator("tags_added", "tags_removed", "add_tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(tag_name(v) for v in value))

    @field_validator("clicked")
    @classmethod
    def _steps(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list):
            steps = [str(v).strip() for v in value]
            if not steps or not all(steps):
                raise ValueError("name the steps whose clicks end the SOP, or write true")
            return list(dict.fromkeys(steps))
        return value

    def exits_on_click(self, step: str) -> bool:
        """Whether a person's click on a link of ``step`` (of this SOP) ends it."""
        if isinstance(self.clicked, list):
            return step in self.clicked
        return self.clicked
