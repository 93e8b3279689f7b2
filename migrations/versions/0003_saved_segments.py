"""saved segments: named audiences (人群) operators reuse in SOPs

Revision ID: 0003_saved_segments
Revises: 0002_channel_version
Create Date: 2026-12-03 22:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sopbot.db

# revision identifiers, used by Alembic.
revision: str = "0003_saved_segments"
down_revision: str | Sequence[str] | None = "0002_channel_version"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "saved_segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("definition", sopbot.db.JSONType(), nullable=False),
        sa.Column("created_at", sopbot.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sopbot.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_saved_segment_name"),
    )


def downgrade() -> None:
    op.drop_table("saved_segments")
