"""Operational state of the scheduler processes (not part of the delivery log).

One ``workers`` row per scheduler process (``sopbot worker`` or ``sopbot
serve``), written by its heartbeat job. The dashboard, ``/healthz``,
``/api/workers`` and ``/metrics`` read it to tell which processes are alive
and how much each one has dispatched.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from sopbot.db import UTCDateTime


class Worker(SQLModel, table=True):
    """A scheduler process as it last reported itself."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_last_seen_at", "last_seen_at"),)

    # The lease owner name (SOPBOT_WORKER_ID, default host:pid): the same string
    # that appears in deliveries.lease_owner, so a row can be traced to it.
    id: str = Field(primary_key=True, max_length=200)
    host: str = Field(max_length=255)
    pid: int
    role: str = Field(max_length=16)  # worker | serve
    version: str = Field(max_length=50)
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    stopped_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Counted by this process since it started (a restart under the same id
    # starts again from zero).
    claimed_total: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    sent_total: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    failed_total: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    # Rows this process held (claimed or sending) at its last heartbeat.
    in_flight: int = 0
