"""Tables of outcomes: conversions and tracked links. Their clicks
(``link_clicks``) are audience events: ``audiences.models.LinkClick``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from audiences.models import LinkClick
from sopbot.db import JSONType, UTCDateTime

__all__ = ["Conversion", "LinkClick", "TrackedLink"]


class Conversion(SQLModel, table=True):
    """An enrollment that reached its template's goal: at most one per enrollment."""

    __tablename__ = "conversions"
    __table_args__ = (
        UniqueConstraint("enrollment_id", name="uq_conversion_enrollment"),
        Index("ix_conversions_template", "template_id", "converted_at"),
        Index("ix_conversions_delivery", "delivery_id"),  # the delivery log
    )

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(foreign_key="enrollments.id")
    template_id: int
    version_id: int
    target_kind: str = Field(max_length=16)
    target_id: int
    converted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    goal: str = Field(max_length=200)  # what was reached, e.g. "tag 'purchased' added"
    # the last touchpoint sent before the conversion (None: none was sent yet)
    touchpoint_name: str | None = Field(default=None, max_length=100)
    delivery_id: int | None = None
    variant: str | None = Field(default=None, max_length=40)
    touched: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    holdout: bool = False
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class TrackedLink(SQLModel, table=True):
    """One short link in one delivery: ``/{prefix}/{token}`` redirects to ``url``.

    The token is random (no personal data); the row says whose it is."""

    __tablename__ = "tracked_links"
    __table_args__ = (
        UniqueConstraint("delivery_id", "part_index", "slot", name="uq_tracked_link"),
    )

    token: str = Field(primary_key=True, max_length=32)
    delivery_id: int = Field(
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    )
    enrollment_id: int
    template_id: int
    version_id: int
    touchpoint_name: str = Field(max_length=100)
    target_kind: str = Field(max_length=16)
    target_id: int
    part_index: int
    slot: int = 0  # which URL of the part (a text may hold several)
    url: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
