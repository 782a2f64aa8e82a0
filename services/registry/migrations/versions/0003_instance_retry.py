"""Per-instance retry overrides: window and longest wait between attempts (0: defaults).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "instance",
        sa.Column("retry_window_seconds", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "instance",
        sa.Column("retry_max_delay_seconds", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("instance", "retry_max_delay_seconds")
    op.drop_column("instance", "retry_window_seconds")
