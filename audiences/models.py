"""Who sopbot talks to: channel accounts, contacts (friends), group chats, tags."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class ContactStatus:
    ACTIVE = "active"
    DELETED = "deleted"
    BLOCKED = "blocked"
    UNSUBSCRIBED = "unsubscribed"
    ALL = (ACTIVE, DELETED, BLOCKED, UNSUBSCRIBED)


class GroupStatus:
    ACTIVE = "active"
    DISSOLVED = "dissolved"
    ALL = (ACTIVE, DISSOLVED)


class Account(SQLModel, table=True):
    """A staff member's or bot's account (员工账号 / 客服号) that owns friends and groups."""

    __tablename__ = "accounts"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(unique=True, max_length=128)
    name: str = Field(default="", max_length=200)
    channel: str | None = Field(default=None, max_length=100)


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("account_id", "external_id", name="uq_contact_external"),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=128, index=True)
    account_id: int | None = Field(default=None, foreign_key="accounts.id", index=True)
    name: str = Field(default="", max_length=200)
    joined_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    status: str = Field(default=ContactStatus.ACTIVE, max_length=16)
    timezone: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )


class GroupChat(SQLModel, table=True):
    __tablename__ = "group_chats"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(unique=True, max_length=128)
    owner_account_id: int | None = Field(default=None, foreign_key="accounts.id", index=True)
    name: str = Field(default="", max_length=200)
    member_count: int = 0
    joined_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    status: str = Field(default=GroupStatus.ACTIVE, max_length=16)
    attributes: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )


class Tag(SQLModel, table=True):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("name", name="uq_tag_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    group_name: str | None = Field(default=None, max_length=100)  # 标签组


class TagAssignment(SQLModel, table=True):
    """A tag on a contact or a group chat, with the time it was applied."""

    __tablename__ = "tag_assignments"
    __table_args__ = (
        UniqueConstraint("tag_id", "target_kind", "target_id", name="uq_tag_assignment"),
        Index("ix_tag_assignments_target", "target_kind", "target_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tag_id: int = Field(foreign_key="tags.id")
    target_kind: str = Field(max_length=16)
    target_id: int
    tagged_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class InboxStatus:
    PENDING = "pending"  # stored, not applied yet (WeCom callbacks are applied after the reply)
    APPLIED = "applied"
    FAILED = "failed"  # could not be applied; ``error`` says why, nothing of it was changed
    IGNORED = "ignored"  # a kind sopbot does not act on (e.g. a WeCom change type it skips)
    ALL = (PENDING, APPLIED, FAILED, IGNORED)


class InboxEvent(SQLModel, table=True):
    """Every audience event received, with the key that makes a replay a no-op.

    ``dedupe_key`` is the caller's idempotency id (``api:<id>``) or, for WeCom
    callbacks, a hash of the decrypted event (WeCom retries up to 3 times)."""

    __tablename__ = "audience_events"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_audience_event_key"),
        Index("ix_audience_events_status", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str | None = Field(default=None, max_length=300)
    source: str = Field(max_length=16)  # api / wecom / import / internal
    kind: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    status: str = Field(default=InboxStatus.PENDING, max_length=16)
    applied_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    error: str | None = Field(default=None, max_length=2000)


class SavedSegment(SQLModel, table=True):
    """A named audience (人群) an operator built once and reuses in SOPs: a
    segment definition (``audiences.segments``) under a name."""

    __tablename__ = "saved_segments"
    __table_args__ = (UniqueConstraint("name", name="uq_saved_segment_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    definition: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class LinkClick(SQLModel, table=True):
    """A request to a tracked link (a ``link_clicked`` audience event): a person's
    click, a repeat, or a bot/preview. The ids name the delivery it was in."""

    __tablename__ = "link_clicks"
    __table_args__ = (
        Index("ix_link_clicks_token", "token", "clicked_at"),
        Index("ix_link_clicks_template", "template_id", "clicked_at"),
        Index("ix_link_clicks_target", "target_kind", "target_id", "clicked_at"),
        Index("ix_link_clicks_delivery", "delivery_id"),  # the delivery log
    )

    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(max_length=32)
    delivery_id: int = Field(
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    )
    enrollment_id: int
    template_id: int
    touchpoint_name: str = Field(max_length=100)
    target_kind: str = Field(max_length=16)
    target_id: int
    clicked_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    user_agent: str = Field(default="", max_length=500)
    bot: bool = False  # link previews (WeCom's unfurler), crawlers
    repeat: bool = False  # the same link clicked before (by a person)
    extra: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
