"""Finding contacts and group chats: by name or external id, by tag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, or_, select, text
from sqlmodel import Session, col

from audiences import service as audiences_service
from audiences.models import Account, Contact, GroupChat, Tag, TagAssignment


@dataclass
class SearchResult:
    total: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, taken literally: ``%``, ``_``
    and ``\\`` in what a user typed are characters, not wildcards (escape ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(
    target_kind: str,
    q: str | None,
    tag: str | None,
    status: str | None,
    account: str | None,
) -> list[Any]:
    model: Any = Contact if target_kind == "contact" else GroupChat
    owner = model.account_id if target_kind == "contact" else model.owner_account_id
    conditions: list[Any] = []
    if q:
        pattern = contains_pattern(q.strip())
        conditions.append(
            or_(
                col(model.name).ilike(pattern, escape="\\"),
                col(model.external_id).ilike(pattern, escape="\\"),
            )
        )
    if tag:
        conditions.append(
            exists().where(
                col(TagAssignment.tag_id) == Tag.id,
                col(Tag.name) == tag.strip(),
                col(TagAssignment.target_kind) == target_kind,
                col(TagAssignment.target_id) == model.id,
            )
        )
    if status:
        conditions.append(model.status == status)
    if account:
        # the owning account by its external id or its display name
        named = or_(
            col(Account.external_id) == account.strip(), col(Account.name) == account.strip()
        )
        conditions.append(col(owner).in_(select(col(Account.id)).where(named)))
    return conditions


def matching_ids(
    session: Session,
    target_kind: str,
    *,
    q: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    account: str | None = None,
) -> list[int]:
    """The ids of every contact or group a search matches (an action on "all N
    matching this filter")."""
    model: Any = Contact if target_kind == "contact" else GroupChat
    conditions = _conditions(target_kind, q, tag, status, account)
    return list(session.execute(select(model.id).where(*conditions).order_by(model.id)).scalars())


def search(
    session: Session,
    target_kind: str,
    *,
    q: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    account: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> SearchResult:
    """Contacts (``contact``) or groups (``group``) whose name or external id
    contains ``q``, that carry ``tag``, have ``status`` and belong to
    ``account`` (external id or display name); newest first, with their tags."""
    model: Any = Contact if target_kind == "contact" else GroupChat
    owner = model.account_id if target_kind == "contact" else model.owner_account_id
    conditions = _conditions(target_kind, q, tag, status, account)
    total = session.execute(select(func.count()).select_from(model).where(*conditions)).scalar_one()
    rows = session.execute(
        select(model, col(Account.external_id), col(Account.name))
        .outerjoin(Account, col(Account.id) == owner)
        .where(*conditions)
        .order_by(col(model.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    tags = audiences_service.tags_of(session, target_kind, [r[0].id for r in rows])
    return SearchResult(
        total=total,
        rows=[
            {
                **r[0].model_dump(),
                "account": r[1],
                "account_name": r[2],
                "tags": sorted(tags.get(r[0].id, [])),
            }
            for r in rows
        ],
    )


def all_accounts(session: Session) -> list[Account]:
    return list(
        session.execute(select(Account).order_by(col(Account.name), col(Account.id))).scalars()
    )


def all_tags(session: Session) -> list[str]:
    return list(session.execute(select(Tag.name).order_by(Tag.name)).scalars())  # type: ignore[call-overload]


def tag_groups(session: Session) -> list[tuple[str, list[str]]]:
    """Tag names by tag group (标签组), named groups first, ungrouped tags ("") last."""
    grouped: dict[str, list[str]] = {}
    for name, group in session.execute(
        select(col(Tag.name), col(Tag.group_name)).order_by(col(Tag.name))
    ).all():
        grouped.setdefault(group or "", []).append(name)
    return sorted(grouped.items(), key=lambda item: (item[0] == "", item[0]))


def group_names(session: Session) -> list[str]:
    """Every tag group in use."""
    return [group for group, _ in tag_groups(session) if group]


def tag_counts(session: Session) -> list[dict[str, Any]]:
    """Every tag with its tag group and how many contacts and groups carry it."""
    counts: dict[tuple[int, str], int] = {
        (tag_id, kind): n
        for tag_id, kind, n in session.execute(
            select(
                col(TagAssignment.tag_id), col(TagAssignment.target_kind), func.count()
            ).group_by(col(TagAssignment.tag_id), col(TagAssignment.target_kind))
        ).all()
    }
    return [
        {
            "name": tag.name,
            "group": tag.group_name or "",
            "contacts": counts.get((tag.id, "contact"), 0),  # type: ignore[arg-type]
            "groups": counts.get((tag.id, "group"), 0),  # type: ignore[arg-type]
        }
        for tag in sorted(
            session.execute(select(Tag)).scalars(),
            key=lambda t: (not t.group_name, t.group_name or "", t.name),
        )
    ]


def attribute_values(session: Session, limit: int = 60) -> list[tuple[str, str, int]]:
    """The most common text attributes of active contacts — ``(name, value,
    contacts)``, e.g. ``("城市", "上海", 120)`` — offered as chips by the segment builder."""
    if session.get_bind().dialect.name == "postgresql":
        sql = text(
            "SELECT kv.key, kv.value, count(*) AS n FROM contacts, "
            "json_each_text(contacts.attributes) AS kv "
            "WHERE contacts.status = 'active' "
            "AND json_typeof(contacts.attributes -> kv.key) = 'string' "
            "GROUP BY kv.key, kv.value ORDER BY n DESC, kv.key, kv.value LIMIT :limit"
        )
    else:
        sql = text(
            "SELECT kv.key, kv.value, count(*) AS n FROM contacts, "
            "json_each(contacts.attributes) AS kv "
            "WHERE contacts.status = 'active' AND kv.type = 'text' "
            "GROUP BY kv.key, kv.value ORDER BY n DESC, kv.key, kv.value LIMIT :limit"
        )
    rows = session.execute(sql, {"limit": limit}).all()
    return sorted(((str(k), str(v), int(n)) for k, v, n in rows), key=lambda r: (r[0], -r[2], r[1]))
