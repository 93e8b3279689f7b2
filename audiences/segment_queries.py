"""Segments as SQL: the query that selects every active contact or group chat a
segment holds, and the preview built on it.

``segment_query`` enrolls a template's audience when it is published (and finds
the overlap with other live SOPs and the real targets a draft is rendered for);
``preview`` is the count, the first rows, and the tags and accounts a segment
names that do not exist, as ``POST /api/segments/preview`` and the segment pages
show them. Both must select the targets ``Segment.matches`` (``audiences.segments``)
accepts one at a time; ``tests/audiences/test_segments.py`` checks both on the
same cases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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

from audiences.models import Account, ContactStatus, GroupStatus, Tag
from audiences.segments import (
    SEGMENT_TARGET,
    AttributeFilter,
    GroupSegment,
    NewFriendsSegment,
    Scalar,
    TaggedSegment,
    TargetKind,
    _kind_of,
)
from audiences.tables import TAG_ASSIGNMENTS, target_table
from sopbot.clock import SystemClock

# ------------------------------------------------------------- attribute filters

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


# ---------------------------------------------------------------------- segments


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


# ---------------------------------------------------------------------- previews


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
