"""The bootstrap token keeps none of its characters: its `prefix` (the first 8) was shown to
every owner of the bootstrap workspace, and an operator chose the token, of any length.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE token SET prefix = '' WHERE name = 'bootstrap' "
        "AND member_id IN (SELECT id FROM member WHERE bootstrap)"
    )


def downgrade() -> None:
    pass  # the characters are gone: nothing to restore
