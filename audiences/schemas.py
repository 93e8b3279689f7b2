"""Input shapes for contacts and groups (API bodies, CLI, demo data)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sopbot.clock import ensure_utc
from sopbot.ids import plain_identifier


def aware_joined_at(value: datetime | None) -> datetime | None:
    """A join time must say its UTC offset (a bare time is ambiguous here)."""
    if value is not None and value.tzinfo is None:
        raise ValueError("joined_at needs a UTC offset, e.g. 2027-03-01T21:30:00+08:00")
    return None if value is None else ensure_utc(value)


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=128)
    name: str = Field("", max_length=200)
    account: str | None = Field(None, description="external id of the owning staff account")
    joined_at: datetime | None = Field(None, description="when the friendship began (default now)")
    timezone: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)

    _plain = field_validator("external_id", "account")(plain_identifier)

    _aware = field_validator("joined_at")(aware_joined_at)


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=128)
    name: str = Field("", max_length=200)
    owner: str | None = Field(None, description="external id of the owning staff account")
    member_count: int = Field(0, ge=0)
    joined_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)

    _plain = field_validator("external_id", "owner")(plain_identifier)

    _aware = field_validator("joined_at")(aware_joined_at)
