"""Delivery records written by the executor pool: per-minute counts and failure samples.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_minute",
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workspace_id", sa.Text(), nullable=False),
        sa.Column("function_id", sa.Text(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("retried", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("discarded", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("filtered", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("invocations", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("execution_ms", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("instance_id", "minute"),
    )
    op.create_table(
        "delivery_failure",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("version_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_stack", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("requests", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_delivery_failure_instance_time", "delivery_failure", ["instance_id", "time"])


def downgrade() -> None:
    op.drop_index("ix_delivery_failure_instance_time", table_name="delivery_failure")
    op.drop_table("delivery_failure")
    op.drop_table("delivery_minute")
