"""Data keys: encrypted values are sealed under a data key of this table, itself sealed
(wrapped) by the deployment's master key (EVENTFN_SECRET_KEY), so the data key can be rotated
without a restart. Values sealed directly by the master key ("v1:") stay readable.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_key",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("master_key_id", sa.Text(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # At most one current data key: the one every new value is sealed under.
    op.create_index(
        "ix_secret_key_one_current",
        "secret_key",
        ["state"],
        unique=True,
        postgresql_where=sa.text("state = 'current'"),
    )


def downgrade() -> None:
    op.drop_index("ix_secret_key_one_current", table_name="secret_key")
    op.drop_table("secret_key")
