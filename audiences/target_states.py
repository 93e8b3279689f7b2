"""A contact or group chat as audience changes see it (``TargetState``): its
row, its tags and, within a batch, its recent clicks; and ``load_states``, which
reads the row and tags of targets known by id.

``audiences.applying`` builds these for a batch of events and returns each
touched target's state before and after; the SOP reactions (``scheduler.flows``)
match them against a template's segment through ``TargetState.facts``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from audiences.clicks import ClickKey
from audiences.events import LinkClicked
from audiences.models import Account, Tag
from audiences.segments import TargetFacts
from audiences.tables import TAG_ASSIGNMENTS, owner_account, target_table
from sopbot.sql import among, chunked


@dataclass
class TargetState:
    """A contact or group chat as the batch sees it."""

    kind: str  # contact / group
    id: int | None
    external_id: str
    account_id: int | None  # contacts: the friend's account; groups: the owner
    account: str | None  # that account's external id
    joined_at: datetime
    name: str = ""
    status: str = "active"
    attributes: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None
    member_count: int = 0
    tags: dict[str, datetime] = field(default_factory=dict)  # name -> tagged_at
    # a person's last click per (template id, step) within CLICK_MEMORY_DAYS of
    # ``as_of``, the instant the batch is applied at; ``clicked``: this batch's clicks
    clicks: dict[ClickKey, datetime] = field(default_factory=dict)
    as_of: datetime | None = None
    clicked: list[LinkClicked] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        assert self.id is not None
        return (self.kind, self.id)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def facts(self) -> TargetFacts:
        return TargetFacts(
            account=self.account,
            name=self.name,
            attributes=self.attributes,
            tags=self.tags,
            clicks=self.clicks,
            now=self.as_of,
        )

    def snapshot(self) -> TargetState:
        return dataclasses.replace(
            self,
            attributes=dict(self.attributes),
            tags=dict(self.tags),
            clicks=dict(self.clicks),
            clicked=list(self.clicked),
        )


TargetKey = tuple[str, int]


def load_states(session: Session, keys: Iterable[TargetKey]) -> dict[TargetKey, TargetState]:
    """Current state of targets by (kind, id): what an event batch would see."""
    out: dict[TargetKey, TargetState] = {}
    by_kind: dict[str, list[int]] = {}
    for kind, target_id in keys:
        by_kind.setdefault(kind, []).append(target_id)
    for kind, ids in by_kind.items():
        table = target_table(kind)
        account_col = owner_account(kind)
        for chunk in chunked(sorted(set(ids))):
            for row in session.execute(
                select(table, Account.external_id.label("account_ext"))  # type: ignore[attr-defined,arg-type]
                .outerjoin(Account, col(Account.id) == account_col)
                .where(among(table.c.id, chunk, session))
            ).all():
                out[(kind, row.id)] = TargetState(
                    kind=kind,
                    id=row.id,
                    external_id=row.external_id,
                    account_id=getattr(row, "account_id", None)
                    if kind == "contact"
                    else row.owner_account_id,
                    account=row.account_ext,
                    joined_at=row.joined_at,
                    name=row.name,
                    status=row.status,
                    attributes=dict(row.attributes or {}),
                    timezone=getattr(row, "timezone", None),
                    member_count=getattr(row, "member_count", 0),
                )
            for target_id, name, tagged_at in session.execute(
                select(TAG_ASSIGNMENTS.c.target_id, col(Tag.name), TAG_ASSIGNMENTS.c.tagged_at)
                .join(Tag, col(Tag.id) == TAG_ASSIGNMENTS.c.tag_id)
                .where(
                    TAG_ASSIGNMENTS.c.target_kind == kind,
                    among(TAG_ASSIGNMENTS.c.target_id, chunk, session),
                )
            ).all():
                if (kind, target_id) in out:
                    out[(kind, target_id)].tags[name] = tagged_at
    return out
