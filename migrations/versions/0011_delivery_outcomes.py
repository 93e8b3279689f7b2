"""delivery log outcomes: clicks and conversions found by delivery

Revision ID: 0011_delivery_outcomes
Revises: 0010_claim_indexes
Create Date: 2026-12-04 05:30:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011_delivery_outcomes"
down_revision: str | Sequence[str] | None = "0010_claim_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("link_clicks", schema=None) as batch_op:
        batch_op.create_index("ix_link_clicks_delivery", ["delivery_id"], unique=False)
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.create_index("ix_conversions_delivery", ["delivery_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.drop_index("ix_conversions_delivery")
    with op.batch_alter_table("link_clicks", schema=None) as batch_op:
        batch_op.drop_index("ix_link_clicks_delivery")
