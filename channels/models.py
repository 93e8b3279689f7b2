"""Stored channel instances and the mock channel's record of what it received."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Integer
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
