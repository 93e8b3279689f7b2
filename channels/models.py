"""Stored channel instances and the mock channel's record of what it received."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class ChannelInstance(SQLModel, table=True):
    """An adapter plus its configuration, e.g. "wecom-corp-a" → wecom {corp_id, ...}."""

    __tablename__ = "channel_instances"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    adapter: str = Field(max_length=100)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    enabled: bool = True
    # Bumped by every change (config, enabled, policy): each process's channel
    # pool compares it with the version its live adapter was built from.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class MockMessage(SQLModel, table=True):
    """Every message the mock channel accepted: the witness in tests and the demo."""

    __tablename__ = "mock_messages"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    instance: str = Field(max_length=100)
    delivery_id: int = Field(index=True)
    idempotency_key: str = Field(max_length=100)
    target_kind: str = Field(max_length=16)
    target_external_id: str = Field(max_length=128)
    account_external_id: str | None = Field(default=None, max_length=128)
    mode: str = Field(max_length=16)
    parts: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ChannelPolicy(SQLModel, table=True):
    """How sopbot drives one channel instance (not what the adapter needs: that
    is ``ChannelInstance.config``). A missing row or a null field means the
    workspace default from ``Settings``."""

    __tablename__ = "channel_policies"

    instance: str = Field(primary_key=True, max_length=100)
    rate_per_second: float | None = None  # None: no rate limit
    burst: int | None = None  # bucket size; default max(1, ceil(rate))
    breaker_threshold: int | None = None  # consecutive failed calls that open the breaker
    breaker_cooldown_seconds: float | None = None
    max_attempts: int | None = None  # per channel, else Settings.max_attempts


class BreakerState:
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ChannelBreaker(SQLModel, table=True):
    """Circuit-breaker state of a channel instance, shared by every worker and the API."""

    __tablename__ = "channel_breakers"

    instance: str = Field(primary_key=True, max_length=100)
    state: str = Field(default=BreakerState.CLOSED, max_length=16)
    consecutive_failures: int = 0
    trips: int = 0  # how often it opened
    opened_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    open_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    probe_owner: str | None = Field(default=None, max_length=200)
    probe_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_error: str | None = Field(default=None, max_length=1000)
    updated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class ChannelRateBucket(SQLModel, table=True):
    """Token bucket of a rate-limited channel instance (database backend)."""

    __tablename__ = "channel_rate_buckets"

    instance: str = Field(primary_key=True, max_length=100)
    tokens: float = 0.0
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class TaskState:
    AWAITING = "awaiting"  # created, staff has not confirmed every target yet
    DONE = "done"  # every delivery resolved
    EXPIRED = "expired"  # gave up waiting; the rest became unknown
    CANCELLED = "cancelled"  # recalled: every recipient left before confirmation
    ALL = (AWAITING, DONE, EXPIRED, CANCELLED)


class ChannelTask(SQLModel, table=True):
    """A mass-send task a platform created in ``task`` mode (WeCom ``msgid``),
    with the deliveries it carries, until the poll has resolved them."""

    __tablename__ = "channel_tasks"
    __table_args__ = (
        UniqueConstraint("channel", "provider_task_id", "sender", name="uq_channel_task"),
        Index("ix_channel_tasks_state_next_poll", "state", "next_poll_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=100)
    provider_task_id: str = Field(max_length=200)
    sender: str = Field(max_length=128)
    delivery_ids: list[int] = Field(sa_column=Column(JSONType, nullable=False))
    state: str = Field(default=TaskState.AWAITING, max_length=16)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    next_poll_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    polls: int = 0
    confirmed: int = 0
    failed: int = 0
    last_error: str | None = Field(default=None, max_length=1000)
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Nudges sent to the staff member (WeCom remind_groupmsg_send, 3 a day a task).
    reminders: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    reminded_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class WeComSyncState(SQLModel, table=True):
    """How far a WeCom channel's tag sync got: the last ``edit_external_contact``
    / ``change_external_tag`` callback it handled and the last reconcile run."""

    __tablename__ = "wecom_sync_state"

    instance: str = Field(primary_key=True, max_length=100)
    last_event_id: int = 0
    tags_checked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    reconciled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
