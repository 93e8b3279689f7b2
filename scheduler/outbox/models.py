"""Enrollments and the deliveries outbox.

A ``Delivery`` is one send job: one (enrollment, touchpoint, occurrence). The
unique key on those three columns is what makes enrolling, fanning out a cron
occurrence and re-running either of them idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from sopbot.db import JSONType, UTCDateTime


class DeliveryStatus:
    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    MISSED = "missed"
    UNKNOWN = "unknown"
    # remind mode: a task in the staff member's inbox (scheduler.staff)
    AWAITING_STAFF = "awaiting_staff"
    DONE = "done"
    SKIPPED_BY_STAFF = "skipped_by_staff"

    PENDING = (SCHEDULED, CLAIMED, SENDING, AWAITING_STAFF)
    TERMINAL = (SENT, FAILED, SKIPPED, CANCELLED, MISSED, UNKNOWN, DONE, SKIPPED_BY_STAFF)
    ALL = PENDING + TERMINAL


# Deliveries of this mode are claimed ahead of the due backlog
# (``transitions.claim``): a welcome's WelcomeCode works once, for about 20 s
# after the add event (channels.wecom_welcome), so it cannot wait its turn
# behind thousands of ordinary rows. The partial index ``ix_deliveries_urgent``
# holds only the scheduled ones, so looking for them costs nothing when there
# are none.
URGENT_MODE = "welcome"
URGENT_WHERE = f"status = '{DeliveryStatus.SCHEDULED}' AND mode = '{URGENT_MODE}'"

# Modes whose deliveries of one touchpoint occurrence become one platform job
# (a WeCom mass-send task of up to 10,000 customers or 2,000 groups; one moment
# for all of a touchpoint's customers): a claim that takes some of them takes
# their due siblings too (``transitions.claim_siblings``), so a batch boundary
# does not split one task into several, nor publish the same moment twice.
GATHERED_MODES = ("task", "moment")
GATHER_WHERE = f"status = '{DeliveryStatus.SCHEDULED}' AND mode IN ('task', 'moment')"

# ``deliveries.reason`` is a VARCHAR of this length. PostgreSQL rejects a longer
# value (SQLite stores it), and one over-long reason fails the whole batch's
# write, so dynamic text (adapter errors, exception messages) goes through
# ``clip_reason`` first.
REASON_LENGTH = 1000


def clip_reason(reason: str | None) -> str | None:
    """``reason`` cut to fit ``deliveries.reason`` (an ellipsis marks the cut)."""
    if reason is None or len(reason) <= REASON_LENGTH:
        return reason
    return reason[: REASON_LENGTH - 1] + "…"


class EnrollmentStatus:
    ACTIVE = "active"
    EXITED = "exited"  # an exit condition or the target left
    CANCELLED = "cancelled"  # template archived
    COMPLETED = "completed"
    # never started: the target was already in an SOP this one excludes (互斥);
    # ``exit_reason`` names it, no delivery was written
    SKIPPED = "skipped"


class Enrollment(SQLModel, table=True):
    """A target (contact or group chat) running through one template version."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint(
            "template_id", "target_kind", "target_id", "cycle", name="uq_enrollment_target"
        ),
        Index("ix_enrollments_version_status", "version_id", "status"),
        Index("ix_enrollments_target", "target_kind", "target_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="sop_templates.id")
    version_id: int = Field(foreign_key="template_versions.id")
    target_kind: str = Field(max_length=16)
    target_id: int
    cycle: int = 0  # re-entries count up; enrolling the same cycle twice is a no-op
    anchor_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    enrolled_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    status: str = Field(default=EnrollmentStatus.ACTIVE, max_length=16)
    exited_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    exit_reason: str | None = Field(default=None, max_length=500)
    # in the template's control group: enrolled, deliveries skipped ("holdout")
    holdout: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})


class Delivery(SQLModel, table=True):
    """One send job in the outbox, and afterwards its line in the delivery log."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "touchpoint_id", "occurrence", name="uq_delivery_key"),
        Index("ix_deliveries_status_run_at", "status", "run_at"),
        # Gathering a touchpoint occurrence's task/moment rows (GATHERED_MODES).
        Index(
            "ix_deliveries_gather",
            "touchpoint_id",
            "occurrence",
            "run_at",
            sqlite_where=text(GATHER_WHERE),
            postgresql_where=text(GATHER_WHERE),
        ),
        # The urgent claim's own index (URGENT_MODE): partial, so it stays tiny.
        Index(
            "ix_deliveries_urgent",
            "run_at",
            sqlite_where=text(URGENT_WHERE),
            postgresql_where=text(URGENT_WHERE),
        ),
        Index("ix_deliveries_template_status", "template_id", "status"),
        # Frequency caps count a target's recent sends (scheduler.outbox.policies). Partial,
        # so enrolling (sent_at still NULL) does not pay for it.
        Index(
            "ix_deliveries_target_sent",
            "target_kind",
            "target_id",
            "sent_at",
            sqlite_where=text("sent_at IS NOT NULL"),
            postgresql_where=text("sent_at IS NOT NULL"),
        ),
        # The delivery log (scheduler.analytics.log) reads in (due_at, id) / (sent_at, id)
        # order, keyset-paged; the sent_at one is partial like the one above.
        Index("ix_deliveries_due_at", "due_at", "id"),
        Index("ix_deliveries_template_due_at", "template_id", "due_at", "id"),
        Index(
            "ix_deliveries_sent_at",
            "sent_at",
            "id",
            sqlite_where=text("sent_at IS NOT NULL"),
            postgresql_where=text("sent_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    enrollment_id: int = Field(foreign_key="enrollments.id")
    touchpoint_id: int = Field(foreign_key="touchpoints.id")
    # 0 for one-off touchpoints; the occurrence's epoch second for cron ones.
    occurrence: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    template_id: int
    version_id: int
    target_kind: str = Field(max_length=16)
    target_id: int
    channel: str = Field(max_length=100)
    mode: str = Field(default="send", max_length=16)

    # due_at: when the timing rule says; run_at: when it may be claimed (deferral,
    # retry backoff); expires_at: after this it is missed rather than sent late.
    due_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    run_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))

    status: str = Field(default=DeliveryStatus.SCHEDULED, max_length=16)
    reason: str | None = Field(default=None, max_length=REASON_LENGTH)
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    provider_message_id: str | None = Field(default=None, max_length=200)
    rendered: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSONType))
    variant: str | None = Field(default=None, max_length=40)  # A/B content variant
