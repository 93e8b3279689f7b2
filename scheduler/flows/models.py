"""Test sends (测试发送): one message of a draft touchpoint sent to a chosen
contact or group through the template's channel, outside the outbox, recorded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class TestSend(SQLModel, table=True):
    __tablename__ = "test_sends"
    __test__ = False  # not a pytest class

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="sop_templates.id", index=True)
    touchpoint_name: str = Field(max_length=100)
    target_kind: str = Field(max_length=16)
    target_id: int
    target_external_id: str = Field(max_length=128)
    channel: str = Field(max_length=100)
    mode: str = Field(default="send", max_length=16)
    parts: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    status: str = Field(default="sending", max_length=16)  # sending / sent / failed
    error: str | None = Field(default=None, max_length=1000)
    provider_message_id: str | None = Field(default=None, max_length=200)
    requested_by: int | None = None
    requested_by_name: str = Field(default="", max_length=64)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
