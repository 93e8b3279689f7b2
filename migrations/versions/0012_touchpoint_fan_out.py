"""fixed-start touchpoints planned shortly before they fall due

Revision ID: 0012_touchpoint_fan_out
Revises: 0011_delivery_outcomes
Create Date: 2026-12-05 00:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sopbot.db

# revision identifiers, used by Alembic.
revision: str = "0012_touchpoint_fan_out"
down_revision: str | Sequence[str] | None = "0011_delivery_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fan_out_at", sopbot.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.drop_column("fan_out_at")
