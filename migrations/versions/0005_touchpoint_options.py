"""touchpoint options (welcome fallback, moment visibility); WeCom tag sync state;
mass-send task nudges

Revision ID: 0005_touchpoint_options
Revises: 0004_materials
Create Date: 2026-12-03 22:15:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import sopbot.db

# revision identifiers, used by Alembic.
revision: str = "0005_touchpoint_options"
down_revision: str | Sequence[str] | None = "0004_materials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.JSON(), server_default="{}", nullable=False))
    with op.batch_alter_table("channel_tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reminders", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("reminded_at", sopbot.db.UTCDateTime(), nullable=True))
    op.create_table(
        "wecom_sync_state",
        sa.Column("instance", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("last_event_id", sa.Integer(), nullable=False),
        sa.Column("tags_checked_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.Column("reconciled_at", sopbot.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("instance"),
    )


def downgrade() -> None:
    op.drop_table("wecom_sync_state")
    with op.batch_alter_table("channel_tasks", schema=None) as batch_op:
        batch_op.drop_column("reminded_at")
        batch_op.drop_column("reminders")
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.drop_column("options")
