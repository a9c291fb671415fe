"""workflow runs: a run's downstream closure as one unit (joins, skips, repair)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workflow',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('plan', sa.JSON(), nullable=False),
        sa.Column('repairs', sa.JSON(), nullable=False),
        sa.Column('cancelled_by', sa.String(), nullable=True),
        sa.PrimaryKeyConstraint('id'))
    op.create_table(
        'workflow_node',
        sa.Column('workflow_id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('reason', sa.String(), nullable=True),
        sa.Column('repair', sa.Integer(), nullable=False),
        sa.Column('items', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('workflow_id', 'task'))
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('workflow_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_run_workflow', ['workflow_id'], unique=False,
                              sqlite_where=sa.text('workflow_id IS NOT NULL'),
                              postgresql_where=sa.text('workflow_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_workflow')
        batch_op.drop_column('workflow_id')
    op.drop_table('workflow_node')
    op.drop_table('workflow')
