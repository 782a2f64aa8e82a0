"""A sampled failure says how many events its invocation held: the logs and requests kept
with it are the whole invocation's, theirs together.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "delivery_failure",
        sa.Column("invocation_events", sa.Integer(), nullable=False, server_default="1"),
    )


def downgrade() -> None:
    op.drop_column("delivery_failure", "invocation_events")
