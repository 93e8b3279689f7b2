"""Staff tasks (a remind-mode delivery in its staff member's inbox), the digest
messages that announce them, and the deadlines operators set per step.

The task's status is the delivery's (``awaiting_staff`` → ``done`` /
``skipped_by_staff`` / ``missed``, written by ``scheduler.outbox.transitions``);
a ``StaffTask`` row holds what the inbox and the execution analytics need
beside it: whose task it is, until when, and how it ended.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from sopbot.db import UTCDateTime


class StaffTask(SQLModel, table=True):
    """One remind-mode delivery assigned to a staff member (账号)."""

    __tablename__ = "staff_tasks"
    __table_args__ = (
        Index("ix_staff_tasks_account_deadline", "account_id", "deadline_at"),
        Index("ix_staff_tasks_template_assigned", "template_id", "assigned_at"),
        Index("ix_staff_tasks_deadline_open", "deadline_at", "acted_at"),
    )

    # No foreign key: retention may archive the delivery row; the task's own
    # facts (who, which step, when, on time) stay for the analytics.
    delivery_id: int = Field(
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    )
    account_id: int
    template_id: int
    touchpoint_id: int
    target_kind: str = Field(max_length=16)
    target_id: int
    assigned_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    deadline_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # 稍后提醒: not listed as due again (nor nudged) before this.
    remind_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    acted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    on_time: bool | None = None
    skip_reason: str | None = Field(default=None, max_length=200)
    announced_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    nudged_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class DigestState:
    SENDING = "sending"  # taken by one worker; a crash leaves it here (not resent)
    SENT = "sent"
    FAILED = "failed"


class StaffDigest(SQLModel, table=True):
    """One app message to one staff member for one window: the unique key is
    what makes the digest exactly-once across workers and ticks."""

    __tablename__ = "staff_digests"
    __table_args__ = (
        UniqueConstraint("account_id", "window_start", "kind", name="uq_staff_digest_window"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int
    kind: str = Field(max_length=16)  # digest | nudge
    window_start: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    channel: str = Field(max_length=100)
    tasks: int = 0
    state: str = Field(default=DigestState.SENDING, max_length=16)
    text: str = Field(default="", max_length=2000)
    error: str | None = Field(default=None, max_length=1000)
    provider_message_id: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class StaffStepDeadline(SQLModel, table=True):
    """An operator's deadline for a step's staff tasks: ``hours`` after the
    step's due time (instead of the touchpoint's grace period)."""

    __tablename__ = "staff_step_deadlines"
    __table_args__ = (UniqueConstraint("template_id", "touchpoint", name="uq_staff_step"),)

    id: int | None = Field(default=None, primary_key=True)
    template_id: int
    touchpoint: str = Field(max_length=100)
    hours: float
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
