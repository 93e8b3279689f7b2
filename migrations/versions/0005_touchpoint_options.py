"""touchpoint options: mode settings (welcome fallback, moment visibility)

Revision ID: 0005_touchpoint_options
Revises: 0002_channel_version
Create Date: 2026-12-03 22:15:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005_touchpoint_options"
down_revision: str | Sequence[str] | None = "0002_channel_version"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.drop_column("options")
