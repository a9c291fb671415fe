"""a run's cells (a file in ``# %%`` cells), the environment it ran in, and where it ran
(its execution backend and, for a Ray run, its job and node)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cells', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('environment', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('backend', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('placement', sa.JSON(), nullable=True))
    op.create_table(
        'environment',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('python', sa.String(length=64), nullable=False),
        sa.Column('packages', sa.JSON(), nullable=False),
        sa.Column('variables', sa.JSON(), nullable=False),
        sa.Column('first_seen', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('environment')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_column('placement')
        batch_op.drop_column('backend')
        batch_op.drop_column('environment')
        batch_op.drop_column('cells')
