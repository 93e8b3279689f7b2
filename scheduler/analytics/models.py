"""Tables behind the delivery statistics: pre-aggregated rollups of settled
deliveries, and the watermark that says which deliveries they cover.

A delivery is *settled* once it is finished, will not change again, and has been
added to the rollups (see ``scheduler.analytics.retention.roll_up``). Statistics read the
rollups for settled deliveries and the ``deliveries`` table for the rest, so they
stay fast however long the history, and stay available after retention has
archived the rows themselves.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Column, Date, Index, Integer
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class DeliveryDailyRollup(SQLModel, table=True):
    """Settled deliveries counted per local day and due hour, template version,
    touchpoint, channel instance, status and reason.

    The hour (``hour_start``, UTC) keeps the sends-per-hour chart of archived days;
    ``day`` is the date of that hour in the workspace zone when it was rolled up.
    Several rows may share one key (each roll-up adds rows); readers sum them.
    Lateness (``sent_at - due_at`` of sent rows) is kept in whole milliseconds as a
    count, a sum, a maximum and a histogram (``scheduler.analytics.stats.lateness_bucket``).
    """

    __tablename__ = "delivery_daily_rollups"
    __table_args__ = (
        Index("ix_delivery_daily_rollups_template_hour", "template_id", "hour_start"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(sa_column=Column(Date, nullable=False))
    hour_start: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    template_id: int
    version_id: int
    touchpoint_id: int
    channel: str = Field(max_length=100)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=1000)
    deliveries: int = Field(sa_column=Column(BigInteger, nullable=False))
    late_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    late_sum_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    late_max_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    # {"<bucket lower bound in ms>": count}; only on rows of sent deliveries.
    late_histogram: dict[str, int] | None = Field(default=None, sa_column=Column(JSONType))


class DeliveryAccountRollup(SQLModel, table=True):
    """Settled deliveries per local day and the staff account that owns the target
    (the contact's account or the group chat's owner, as it was when rolled up)."""

    __tablename__ = "delivery_account_rollups"
    __table_args__ = (Index("ix_delivery_account_rollups_template_day", "template_id", "day"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(sa_column=Column(Date, nullable=False))
    template_id: int
    version_id: int
    touchpoint_id: int
    channel: str = Field(max_length=100)
    account_id: int | None = None
    status: str = Field(max_length=16)
    deliveries: int = Field(sa_column=Column(BigInteger, nullable=False))


class DeliveryRollupState(SQLModel, table=True):
    """The watermark: deliveries with ``id <= settled_max_id`` and ``due_at <
    settled_before``, except the ones held back in ``delivery_rollup_holds``, are
    in the rollups. One row (id 1)."""

    __tablename__ = "delivery_rollup_state"

    id: int | None = Field(default=None, primary_key=True)
    settled_max_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    settled_before: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class DeliveryRollupHold(SQLModel, table=True):
    """A delivery below the watermark that was not finished (or finished too
    recently to be final) when the watermark passed it; rolled up later."""

    __tablename__ = "delivery_rollup_holds"

    delivery_id: int = Field(
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
        )
    )
