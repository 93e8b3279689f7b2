"""Segments: who a template enrolls by itself (人群 / 客户分群).

Three kinds, matching the three SOP scenarios:

* ``new_friends`` — contacts added as friends after the template goes live,
  optionally only of some accounts and/or with some attributes;
* ``tagged`` — contacts whose tags satisfy a tag expression (AND / OR / NOT),
  plus account and attribute filters;
* ``groups`` — group chats by tag expression, name pattern and owner account.

A segment is evaluated two ways that must agree: in Python on one target's facts
(``Segment.matches``, used when an event changes a few targets) and in SQL over
the whole table (``segment_query``, used when a template is published and for
previews). ``tests/audiences/test_segments.py`` checks both on the same cases.

The per-template membership rules (exit conditions, re-entry policy) live here
too because they are expressed in the same vocabulary (tags, segment, status).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Collection, Iterable, Mapping
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
from sqlalchemy import (
    Float,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col

from audiences.clicks import ClickCondition, ClickKey
from audiences.models import (
    Account,
    ContactStatus,
    GroupStatus,
    Tag,
)
from audiences.tables import TAG_ASSIGNMENTS, target_table
from audiences.tag_expressions import MAX_TAG_LENGTH, TagExpr, parse_tag_expr, tag_name
from sopbot.clock import SystemClock

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


# --------------------------------------------------------------------------- SQL

_NUMBER_TYPES = {"sqlite": ("integer", "real"), "postgresql": ("number",)}
_TEXT_TYPE = {"sqlite": "text", "postgresql": "string"}


def _json_type_and_value(
    column: Any, key: str, dialect: str
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    if dialect == "postgresql":
        return func.json_typeof(column.op("->")(key)), column.op("->>")(key)
    if not key.isascii():
        # SQLite (3.40) matches a JSON path against the key as stored, and keys
        # are stored \u-escaped (城市 as "\u57ce\u5e02"): a path never finds
        # them. json_each decodes the keys, so look the key up there.
        each = func.json_each(column).table_valued("key", "type", "value")
        typ = select(each.c.type).where(each.c.key == key).scalar_subquery()
        value = select(each.c.value).where(each.c.key == key).scalar_subquery()
        return typ, value
    path = '$."' + key + '"'
    return func.json_type(column, path), func.json_extract(column, path)


def _attr_sql(column: Any, key: str, flt: AttributeFilter, dialect: str) -> ColumnElement[bool]:
    typ, value = _json_type_and_value(column, key, dialect)
    numbers = _NUMBER_TYPES.get(dialect, _NUMBER_TYPES["sqlite"])
    number = case((typ.in_(numbers), cast(value, Float)), else_=None)

    def equal(expected: Scalar) -> ColumnElement[bool]:
        kind = _kind_of(expected)
        if kind == "bool":
            if dialect == "postgresql":
                return and_(typ == "boolean", value == ("true" if expected else "false"))
            return typ == ("true" if expected else "false")
        if kind == "number":
            return and_(typ.in_(numbers), number == float(expected))  # type: ignore[arg-type]
        return and_(typ == _TEXT_TYPE.get(dialect, "text"), value == expected)

    def is_true(expr: ColumnElement[bool]) -> ColumnElement[bool]:
        # NULL (missing attribute) must count as false, also under NOT
        return func.coalesce(expr, false())

    conditions: list[ColumnElement[bool]] = []
    for op, arg in flt.conditions():
        if op == "eq":
            conditions.append(is_true(equal(arg)))
        elif op == "ne":
            conditions.append(not_(is_true(equal(arg))))
        elif op == "in":
            conditions.append(is_true(or_(*(equal(a) for a in arg))))
        elif op == "not_in":
            conditions.append(not_(is_true(or_(*(equal(a) for a in arg)))))
        elif op in ("gt", "gte", "lt", "lte"):
            compare = {
                "gt": number > arg,
                "gte": number >= arg,
                "lt": number < arg,
                "lte": number <= arg,
            }[op]
            conditions.append(is_true(compare))
        elif op == "exists":
            present = is_true(and_(typ.is_not(None), typ != "null"))
            conditions.append(present if arg else not_(present))
    return and_(true(), *conditions)


def _tag_ids(session: Session, names: Iterable[str]) -> dict[str, int]:
    names = sorted(set(names))
    if not names:
        return {}
    rows = session.execute(select(col(Tag.id), col(Tag.name)).where(col(Tag.name).in_(names))).all()
    return {name: tag_id for tag_id, name in rows}


def segment_condition(
    session: Session,
    target: TargetKind,
    segment: NewFriendsSegment | TaggedSegment | GroupSegment,
    *,
    now: datetime | None = None,
) -> ColumnElement[bool]:
    """The segment as a SQL condition on the contacts or group_chats table
    (status not included). ``now`` is what "clicked in the last N days" counts
    back from (default: the system clock)."""
    table = target_table(target)
    account_col = table.c.account_id if target == "contact" else table.c.owner_account_id
    dialect = session.get_bind().dialect.name
    tag_ids = _tag_ids(session, segment.tag_names())

    def leaf(name: str) -> ColumnElement[bool]:
        tag_id = tag_ids.get(name)
        if tag_id is None:
            return false()
        return exists().where(
            TAG_ASSIGNMENTS.c.tag_id == tag_id,
            TAG_ASSIGNMENTS.c.target_kind == target,
            TAG_ASSIGNMENTS.c.target_id == table.c.id,
        )

    conditions: list[ColumnElement[bool]] = []
    accounts = getattr(segment, "accounts", None) or getattr(segment, "owners", None)
    if accounts:
        conditions.append(
            account_col.in_(select(col(Account.id)).where(col(Account.external_id).in_(accounts)))
        )
    tags = getattr(segment, "tags", None)
    if tags is not None:
        conditions.append(tags.to_sql(leaf))
    pattern = getattr(segment, "name_pattern", None)
    if pattern:
        conditions.append(table.c.name.ilike(_glob_to_like(pattern), escape="\\"))
    for key, flt in segment.attributes.items():
        conditions.append(_attr_sql(table.c.attributes, key, flt, dialect))
    if segment.clicked is not None:
        conditions.append(segment.clicked.to_sql(target, table, now or SystemClock().now()))
    return and_(true(), *conditions)


def _glob_to_like(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def segment_query(
    session: Session,
    target: TargetKind,
    segment: NewFriendsSegment | TaggedSegment | GroupSegment,
    *,
    joined_since: datetime | None = None,
    now: datetime | None = None,
) -> Any:
    """``SELECT id FROM contacts|group_chats`` of the active targets in the segment."""
    table = target_table(target)
    active = ContactStatus.ACTIVE if target == "contact" else GroupStatus.ACTIVE
    stmt = select(table.c.id).where(
        table.c.status == active, segment_condition(session, target, segment, now=now)
    )
    if joined_since is not None:
        stmt = stmt.where(table.c.joined_at >= joined_since)
    return stmt


@dataclass
class Preview:
    count: int
    rows: list[dict[str, Any]]
    unknown_tags: list[str]
    unknown_accounts: list[str]


def preview(
    session: Session,
    target: TargetKind,
    segment: NewFriendsSegment | TaggedSegment | GroupSegment,
    *,
    limit: int = 20,
    joined_since: datetime | None = None,
    now: datetime | None = None,
) -> Preview:
    """How many active targets the segment holds now, and the first ``limit`` of them."""
    if SEGMENT_TARGET[segment.kind] != target:
        raise ValueError(f"a {segment.kind} segment selects {SEGMENT_TARGET[segment.kind]}s")
    ids_query = segment_query(session, target, segment, joined_since=joined_since, now=now)
    count = session.execute(select(func.count()).select_from(ids_query.subquery())).scalar_one()
    table = target_table(target)
    account_col = table.c.account_id if target == "contact" else table.c.owner_account_id
    rows = session.execute(
        select(
            table.c.id,
            table.c.external_id,
            table.c.name,
            table.c.joined_at,
            col(Account.external_id),
        )
        .outerjoin(Account, col(Account.id) == account_col)
        .where(table.c.id.in_(ids_query.order_by(table.c.id).limit(limit).scalar_subquery()))
        .order_by(table.c.id)
    ).all()
    tags: dict[int, list[str]] = {r[0]: [] for r in rows}
    if rows:
        for target_id, name in session.execute(
            select(TAG_ASSIGNMENTS.c.target_id, col(Tag.name))
            .join(Tag, col(Tag.id) == TAG_ASSIGNMENTS.c.tag_id)
            .where(
                TAG_ASSIGNMENTS.c.target_kind == target,
                TAG_ASSIGNMENTS.c.target_id.in_(list(tags)),
            )
            .order_by(Tag.name)
        ).all():
            tags[target_id].append(name)
    mentioned = segment.tag_names()
    known = _tag_ids(session, mentioned)
    accounts = list(getattr(segment, "accounts", None) or getattr(segment, "owners", None) or [])
    known_accounts = set(
        session.execute(
            select(col(Account.external_id)).where(col(Account.external_id).in_(accounts))
        ).scalars()
    )
    return Preview(
        count=count,
        rows=[
            {
                "id": r[0],
                "external_id": r[1],
                "name": r[2],
                "joined_at": r[3],
                "account": r[4],
                "tags": tags[r[0]],
            }
            for r in rows
        ],
        unknown_tags=sorted(mentioned - set(known)),
        unknown_accounts=sorted(set(accounts) - known_accounts),
    )
