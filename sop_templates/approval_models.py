"""The review cycle of a template's draft: who wrote it, who submitted it, who
signed it off (审批 / 签稿). One open cycle per template; publishing closes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class ReviewState:
    EDITING = "editing"
    PENDING = "pending"  # submitted, waiting for an approver
    APPROVED = "approved"
    REJECTED = "rejected"
    PUBLISHED = "published"  # closed: the approved draft went live
    OPEN = (EDITING, PENDING, APPROVED, REJECTED)


class TemplateReview(SQLModel, table=True):
    __tablename__ = "template_reviews"
    __table_args__ = (Index("ix_template_reviews_template", "template_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="sop_templates.id")
    state: str = Field(default=ReviewState.EDITING, max_length=16)
    # user ids and names (plain values: users live in the api package) of
    # everyone who edited this draft; none of them may approve it
    authors: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    draft_digest: str | None = Field(default=None, max_length=64)  # what was submitted
    submitted_by: int | None = None
    submitted_by_name: str | None = Field(default=None, max_length=64)
    submitted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    decided_by: int | None = None
    decided_by_name: str | None = Field(default=None, max_length=64)
    decided_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    note: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
