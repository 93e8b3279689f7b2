"""Keeping sopbot's picture of the community: accounts, contacts, groups, tags."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from audiences.models import Account, Contact, GroupChat, Tag, TagAssignment
from audiences.schemas import ContactIn, GroupIn
from sopbot.ids import is_id


class AudienceError(ValueError):
    """An audience request that cannot be carried out; the message says why."""


class NotFound(LookupError):
    pass


def ensure_account(session: Session, external_id: str, name: str = "") -> Account:
    account = session.exec(select(Account).where(Account.external_id == external_id)).first()
    if account is None:
        account = Account(external_id=external_id, name=name or external_id)
        session.add(account)
        session.flush()
    return account


def upsert_contact(session: Session, data: ContactIn, now: datetime) -> Contact:
    """Create or update a contact (friend) by (account, external id)."""
    account_id = ensure_account(session, data.account).id if data.account else None
    contact = session.exec(
        select(Contact).where(
            Contact.external_id == data.external_id, Contact.account_id == account_id
        )
    ).first()
    if contact is None:
        contact = Contact(
            external_id=data.external_id,
            account_id=account_id,
            name=data.name,
            joined_at=data.joined_at or now,
            timezone=data.timezone,
            attributes=dict(data.attributes),
        )
    else:
        contact.name = data.name or contact.name
        contact.attributes = {**contact.attributes, **data.attributes}
        if data.timezone:
            contact.timezone = data.timezone
    session.add(contact)
    session.flush()
    for tag in data.tags:
        add_tag(session, "contact", contact.id, tag, now)  # type: ignore[arg-type]
    return contact


def upsert_group(session: Session, data: GroupIn, now: datetime) -> GroupChat:
    owner_id = ensure_account(session, data.owner).id if data.owner else None
    group = session.exec(select(GroupChat).where(GroupChat.external_id == data.external_id)).first()
    if group is None:
        group = GroupChat(
            external_id=data.external_id,
            owner_account_id=owner_id,
            name=data.name,
            member_count=data.member_count,
            joined_at=data.joined_at or now,
            attributes=dict(data.attributes),
        )
    else:
        group.name = data.name or group.name
        group.member_count = data.member_count or group.member_count
        group.attributes = {**group.attributes, **data.attributes}
    session.add(group)
    session.flush()
    for tag in data.tags:
        add_tag(session, "group", group.id, tag, now)  # type: ignore[arg-type]
    return group


def ensure_tag(session: Session, name: str, group_name: str | None = None) -> Tag:
    tag = session.exec(select(Tag).where(Tag.name == name)).first()
    if tag is None:
        tag = Tag(name=name, group_name=group_name)
        session.add(tag)
        session.flush()
    return tag


def add_tag(
    session: Session, target_kind: str, target_id: int, tag_name: str, now: datetime
) -> TagAssignment:
    tag = ensure_tag(session, tag_name)
    existing = session.exec(
        select(TagAssignment).where(
            TagAssignment.tag_id == tag.id,
            TagAssignment.target_kind == target_kind,
            TagAssignment.target_id == target_id,
        )
    ).first()
    if existing:
        return existing
    assignment = TagAssignment(
        tag_id=tag.id,  # type: ignore[arg-type]
        target_kind=target_kind,
        target_id=target_id,
        tagged_at=now,
    )
    session.add(assignment)
    session.flush()
    return assignment


def get_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"no contact with id {contact_id}")
    return contact


def find_contact(session: Session, key: str | int) -> Contact:
    if is_id(key):
        found = session.get(Contact, int(key))
        if found:
            return found
    contact = session.exec(select(Contact).where(Contact.external_id == str(key))).first()
    if contact is None:
        raise NotFound(f"no contact with id or external id {key!r}")
    return contact


def find_group(session: Session, key: str | int) -> GroupChat:
    if is_id(key):
        found = session.get(GroupChat, int(key))
        if found:
            return found
    group = session.exec(select(GroupChat).where(GroupChat.external_id == str(key))).first()
    if group is None:
        raise NotFound(f"no group chat with id or external id {key!r}")
    return group


def tags_of(session: Session, target_kind: str, ids: Iterable[int]) -> dict[int, list[str]]:
    ids = list(ids)
    out: dict[int, list[str]] = {i: [] for i in ids}
    if not ids:
        return out
    rows = session.exec(
        select(TagAssignment.target_id, Tag.name)
        .join(Tag, col(Tag.id) == TagAssignment.tag_id)
        .where(TagAssignment.target_kind == target_kind, col(TagAssignment.target_id).in_(ids))
    ).all()
    for target_id, name in rows:
        out[target_id].append(name)
    return out


def render_targets(
    session: Session, target_kind: str, ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """Load what rendering and sending need for many targets in one query.

    This runs for every dispatch batch, so it selects plain columns (no ORM
    objects) — the difference is most of a batch's preparation time.
    """
    ids = sorted(set(ids))
    if not ids:
        return {}
    table = (Contact if target_kind == "contact" else GroupChat).__table__  # type: ignore[union-attr]
    accounts = Account.__table__  # type: ignore[attr-defined]
    owner = table.c.account_id if target_kind == "contact" else table.c.owner_account_id
    extra = [table.c.member_count] if target_kind == "group" else []
    stmt = (
        select(  # type: ignore[call-overload]
            table.c.id,
            table.c.external_id,
            table.c.name,
            table.c.joined_at,
            table.c.status,
            table.c.attributes,
            accounts.c.external_id.label("account_external_id"),
            accounts.c.name.label("account_name"),
            *extra,
        )
        .select_from(table.outerjoin(accounts, accounts.c.id == owner))
        .where(table.c.id.in_(ids))
    )
    out: dict[int, dict[str, Any]] = {}
    for row in session.execute(stmt):
        item: dict[str, Any] = {
            "id": row.id,
            "external_id": row.external_id,
            "name": row.name,
            "joined_at": row.joined_at,
            "status": row.status,
            "attributes": dict(row.attributes or {}),
            "account": (
                {"external_id": row.account_external_id, "name": row.account_name}
                if row.account_external_id is not None
                else None
            ),
        }
        if target_kind == "group":
            item["member_count"] = row.member_count
        out[row.id] = item
    return out


def is_active(target: dict[str, Any]) -> bool:
    return target.get("status") == "active"
