"""the claim's partial indexes: welcomes ahead of the backlog; a touchpoint's
task and moment rows gathered into one job

Revision ID: 0010_claim_indexes
Revises: 0007_outcomes
Create Date: 2026-12-04 05:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010_claim_indexes"
down_revision: str | Sequence[str] | None = "0007_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here (not imported) so the migration keeps meaning what it meant.
URGENT_WHERE = "status = 'scheduled' AND mode = 'welcome'"
GATHER_WHERE = "status = 'scheduled' AND mode IN ('task', 'moment')"


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_urgent",
        "deliveries",
        ["run_at"],
        unique=False,
        sqlite_where=sa.text(URGENT_WHERE),
        postgresql_where=sa.text(URGENT_WHERE),
    )
    op.create_index(
        "ix_deliveries_gather",
        "deliveries",
        ["touchpoint_id", "occurrence", "run_at"],
        unique=False,
        sqlite_where=sa.text(GATHER_WHERE),
        postgresql_where=sa.text(GATHER_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_gather", table_name="deliveries")
    op.drop_index("ix_deliveries_urgent", table_name="deliveries")
