"""run: when the process was spawned and when it exited

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch_op:
        batch_op.add_column(sa.Column("spawned_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("exited_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_column("exited_at")
        batch_op.drop_column("spawned_at")
