"""An audit entry is named by an id of its own (its millisecond and random bits), not by the
row number every workspace's entries share: the steps between a workspace's own entries
counted every other workspace's changes.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


# The id of an entry an older registry writes meanwhile (a rolling upgrade: it knows no such
# column), of the form `store.audit_id` gives, at its insert's time.
DEFAULT = (
    "'aud_' || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') "
    "|| substr(md5(random()::text || clock_timestamp()::text), 1, 16)"
)


def upgrade() -> None:
    # With a default, never NULL: entries older registries write during the upgrade (and
    # after a rollback) get one, and NOT NULL holds whatever they commit meanwhile.
    op.add_column(
        "audit_event",
        sa.Column("public_id", sa.Text(), nullable=False, server_default=sa.text(DEFAULT)),
    )
    # Entries written before: their own time, as new ones have.
    op.execute(
        "UPDATE audit_event SET public_id = 'aud_' "
        "|| lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0') "
        "|| substr(md5(random()::text || clock_timestamp()::text || id::text), 1, 16)"
    )
    op.create_unique_constraint("audit_event_public_id_key", "audit_event", ["public_id"])


def downgrade() -> None:
    op.drop_constraint("audit_event_public_id_key", "audit_event", type_="unique")
    op.drop_column("audit_event", "public_id")
