"""a task version's lock: its declared dependencies, resolved (pins and hashes)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('task_version', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deps_key', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('lock', sa.Text(), nullable=True))
        batch_op.create_index('ix_task_version_deps_key', ['deps_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('task_version', schema=None) as batch_op:
        batch_op.drop_index('ix_task_version_deps_key')
        batch_op.drop_column('lock')
        batch_op.drop_column('deps_key')
