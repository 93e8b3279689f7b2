"""The audience tables as SQL tables, one name each, for set-based queries in
any package (``CONTACTS.c.account_id``), and which table holds a target kind."""

from __future__ import annotations

from sqlalchemy import Column, Table

from audiences.models import Account, Contact, GroupChat, LinkClick, Tag, TagAssignment

ACCOUNTS = Account.__table__  # type: ignore[attr-defined]
CONTACTS = Contact.__table__  # type: ignore[attr-defined]
GROUPS = GroupChat.__table__  # type: ignore[attr-defined]
TAGS = Tag.__table__  # type: ignore[attr-defined]
TAG_ASSIGNMENTS = TagAssignment.__table__  # type: ignore[attr-defined]
LINK_CLICKS = LinkClick.__table__  # type: ignore[attr-defined]

TARGET_KINDS = ("contact", "group")


def target_table(target_kind: str) -> Table:
    """The table of a target kind: ``contact`` → contacts, ``group`` → groups."""
    if target_kind == "contact":
        return CONTACTS
    if target_kind == "group":
        return GROUPS
    raise ValueError(f"target kind {target_kind!r} is not one of: {', '.join(TARGET_KINDS)}")


def owner_account(target_kind: str) -> Column[int]:
    """The column of a target kind's table that names its staff account (a
    contact's account, a group's owner)."""
    if target_kind == "group":
        return GROUPS.c.owner_account_id  # type: ignore[no-any-return]
    return target_table(target_kind).c.account_id  # type: ignore[no-any-return]
