"""Safe retries: a revision (etag) on every mutable resource, and the request_id records.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MUTABLE = ("workspace", "member", "source", "function")


def upgrade() -> None:
    for table in MUTABLE:
        op.add_column(
            table, sa.Column("revision", sa.BigInteger(), nullable=False, server_default="1")
        )
        op.alter_column(table, "revision", server_default=None)
    op.create_table(
        "request_record",
        sa.Column("workspace_id", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "method", "request_id"),
    )
    op.create_index("ix_request_record_created_at", "request_record", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_request_record_created_at", table_name="request_record")
    op.drop_table("request_record")
    for table in MUTABLE:
        op.drop_column(table, "revision")
