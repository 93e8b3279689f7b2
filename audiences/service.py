"""Reading sopbot's picture of the community: accounts, contacts, groups, tags.

Contacts, groups and tags change only through ``audiences.changes`` (the unit
of work that also runs the SOP reactions); accounts are registered here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Text, type_coerce
from sqlmodel import Session, col, select

from audiences.models import Account, Contact, GroupChat, Tag, TagAssignment
from audiences.tables import ACCOUNTS, owner_account, target_table
from sopbot.ids import is_id
from sopbot.sql import among


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


def save_account(session: Session, external_id: str, name: str) -> Account:
    """Register an account, or rename one (its display name, 员工账号 as shown)."""
    external_id, name = external_id.strip(), name.strip()
    if not external_id:
        raise AudienceError("an account needs an external id")
    if len(external_id) > 128 or len(name) > 200:
        raise AudienceError("the external id or the name is too long")
    account = session.exec(select(Account).where(Account.external_id == external_id)).first()
    if account is None:
        account = Account(external_id=external_id)
    account.name = name or account.name or external_id
    session.add(account)
    session.flush()
    return account


def account_key(session: Session, name_or_id: str) -> str:
    """An account's external id from its external id or its display name (the
    name wins only when it is unambiguous and no account has it as an id)."""
    if session.exec(select(Account.id).where(Account.external_id == name_or_id)).first():
        return name_or_id
    named = session.exec(select(Account.external_id).where(Account.name == name_or_id)).all()
    return named[0] if len(named) == 1 else name_or_id


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
    objects) — the difference is most of a batch's preparation time — and reads
    the attributes and join time as the driver gives them (SQLite: text), decoded
    here only when there is something to decode.
    """
    ids = sorted(set(ids))
    if not ids:
        return {}
    table, accounts, owner = target_table(target_kind), ACCOUNTS, owner_account(target_kind)
    extra = [table.c.member_count] if target_kind == "group" else []
    stmt = (
        select(  # type: ignore[call-overload]
            table.c.id,
            table.c.external_id,
            table.c.name,
            type_coerce(table.c.joined_at, Text).label("joined_at"),
            table.c.status,
            type_coerce(table.c.attributes, Text).label("attributes"),
            accounts.c.external_id.label("account_external_id"),
            accounts.c.name.label("account_name"),
            *extra,
        )
        .select_from(table.outerjoin(accounts, accounts.c.id == owner))
        .where(among(table.c.id, ids, session))  # one parameter, not one per id
    )
    out: dict[int, dict[str, Any]] = {}
    # Rows unpacked as tuples: a Row's attribute lookup costs more than the
    # rest of building the item.
    rows = session.execute(stmt).all()
    for target_id, external_id, name, joined_at, status, attributes, *account in rows:
        item: dict[str, Any] = {
            "id": target_id,
            "external_id": external_id,
            "name": name,
            "joined_at": _instant(joined_at),
            "status": status,
            "attributes": _attributes(attributes),
            "account": (
                {"external_id": account[0], "name": account[1]} if account[0] is not None else None
            ),
        }
        if target_kind == "group":
            item["member_count"] = account[2]
        out[target_id] = item
    return out


def _attributes(raw: Any) -> dict[str, Any]:
    if not raw or raw == "{}":
        return {}
    return dict(json.loads(raw) if isinstance(raw, str) else raw)


def _instant(raw: Any) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, str):  # SQLite's UTC text
        return _parse_instant(raw)
    return raw.astimezone(UTC) if raw.tzinfo else raw.replace(tzinfo=UTC)  # type: ignore[no-any-return]


@lru_cache(maxsize=4096)  # a batch's targets often share a join time
def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def is_active(target: dict[str, Any]) -> bool:
    return target.get("status") == "active"
