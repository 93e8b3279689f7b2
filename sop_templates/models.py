"""Tables of SOP templates: the editable template, its frozen versions and their
touchpoints. Published rows are never updated (only a version's status)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class TemplateStatus:
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    PUBLISHED = "published"
    PAUSED = "paused"
    ARCHIVED = "archived"
    ALL = (DRAFT, PENDING_APPROVAL, PUBLISHED, PAUSED, ARCHIVED)
    # Deliveries only go out while their template is in one of these.
    LIVE = (PUBLISHED,)


class SopTemplate(SQLModel, table=True):
    __tablename__ = "sop_templates"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    target_kind: str = Field(max_length=16)
    status: str = Field(default=TemplateStatus.DRAFT, max_length=24, index=True)
    draft: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    current_version_id: int | None = Field(default=None)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class TemplateVersion(SQLModel, table=True):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version", name="uq_template_version"),)

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="sop_templates.id", index=True)
    version: int
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    published_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Touchpoint(SQLModel, table=True):
    __tablename__ = "touchpoints"
    __table_args__ = (
        UniqueConstraint("version_id", "name", name="uq_touchpoint_name"),
        Index("ix_touchpoints_kind", "timing_kind", "version_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="template_versions.id", index=True)
    template_id: int = Field(foreign_key="sop_templates.id")
    position: int
    name: str = Field(max_length=100)
    timing_kind: str = Field(max_length=16)
    timing: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    content: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    mode: str = Field(default="send", max_length=16)
    grace_seconds: int
    past_policy: str = Field(default="skip", max_length=16)
    # Mode settings (welcome fallback, moment visibility): TouchpointSpec.options.
    options: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONType, nullable=False, server_default="{}"),
    )
    # Cron touchpoints: occurrences up to here have been fanned out.
    planned_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # One-off touchpoints of a fixed start whose deliveries publishing left to
    # the planner (due later than ``service.FIXED_PLAN_AHEAD``): the instant
    # they fall due, until the planner has written them (then NULL again).
    fan_out_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
