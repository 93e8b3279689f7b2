"""staff tasks: remind-mode deliveries in staff inboxes, digests, step deadlines

Revision ID: 0006_staff_tasks
Revises: 0005_touchpoint_options
Create Date: 2026-12-03 22:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sopbot.db

# revision identifiers, used by Alembic.
revision: str = "0006_staff_tasks"
down_revision: str | Sequence[str] | None = "0005_touchpoint_options"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff_tasks",
        sa.Column(
            "delivery_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sopbot.db.UTCDateTime(), nullable=False),
        sa.Column("deadline_at", sopbot.db.UTCDateTime(), nullable=False),
        sa.Column("remind_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.Column("acted_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.Column("on_time", sa.Boolean(), nullable=True),
        sa.Column("skip_reason", sa.String(length=200), nullable=True),
        sa.Column("announced_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.Column("nudged_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("delivery_id"),
    )
    op.create_index("ix_staff_tasks_account_deadline", "staff_tasks", ["account_id", "deadline_at"])
    op.create_index(
        "ix_staff_tasks_template_assigned", "staff_tasks", ["template_id", "assigned_at"]
    )
    op.create_index("ix_staff_tasks_deadline_open", "staff_tasks", ["deadline_at", "acted_at"])
    op.create_table(
        "staff_digests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("window_start", sopbot.db.UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("text", sa.String(length=2000), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sopbot.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "window_start", "kind", name="uq_staff_digest_window"),
    )
    op.create_table(
        "staff_step_deadlines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("touchpoint", sa.String(length=100), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("updated_at", sopbot.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("template_id", "touchpoint", name="uq_staff_step"),
    )


def downgrade() -> None:
    op.drop_table("staff_step_deadlines")
    op.drop_table("staff_digests")
    op.drop_index("ix_staff_tasks_deadline_open", table_name="staff_tasks")
    op.drop_index("ix_staff_tasks_template_assigned", table_name="staff_tasks")
    op.drop_index("ix_staff_tasks_account_deadline", table_name="staff_tasks")
    op.drop_table("staff_tasks")
