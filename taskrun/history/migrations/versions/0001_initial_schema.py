"""initial schema

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run',
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('concurrency', sa.String(length=16), nullable=False),
    sa.Column('timeout', sa.Float(), nullable=False),
    sa.Column('queued_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('signal', sa.String(), nullable=True),
    sa.Column('error', sa.String(), nullable=True),
    sa.Column('cancel_requested_by', sa.String(), nullable=True),
    sa.Column('cancelled_by', sa.String(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_created', sa.Float(), nullable=True),
    sa.Column('host', sa.String(), nullable=True),
    sa.Column('owner', sa.String(), nullable=True),
    sa.Column('code_sha', sa.String(length=64), nullable=True),
    sa.Column('log_path', sa.String(), nullable=True),
    sa.Column('peak_rss', sa.Integer(), nullable=True),
    sa.Column('cpu_seconds', sa.Float(), nullable=True),
    sa.Column('progress', sa.Float(), nullable=True),
    sa.Column('progress_message', sa.String(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index('ix_run_status_id', ['status', 'id'], unique=False)
        batch_op.create_index('ix_run_task_id', ['task', 'id'], unique=False)

    op.create_table('run_sample',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('t', sa.DateTime(), nullable=False),
    sa.Column('rss', sa.Integer(), nullable=False),
    sa.Column('cpu_percent', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run_sample', schema=None) as batch_op:
        batch_op.create_index('ix_run_sample_run_id', ['run_id', 't'], unique=False)

    op.create_table('task_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=False),
    sa.Column('content', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('author', sa.String(), nullable=True),
    sa.Column('note', sa.String(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('task_version', schema=None) as batch_op:
        batch_op.create_index('ix_task_version_task_id', ['task', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('task_version', schema=None) as batch_op:
        batch_op.drop_index('ix_task_version_task_id')

    op.drop_table('task_version')
    with op.batch_alter_table('run_sample', schema=None) as batch_op:
        batch_op.drop_index('ix_run_sample_run_id')

    op.drop_table('run_sample')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_task_id')
        batch_op.drop_index('ix_run_status_id')

    op.drop_table('run')
