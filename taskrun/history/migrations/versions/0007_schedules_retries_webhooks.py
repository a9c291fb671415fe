"""schedules, retries, chaining and webhook deliveries

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False,
                                      server_default='1'))
        batch_op.add_column(sa.Column('retry_of', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('upstream_run', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('scheduled_for', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('not_before', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('followed_up', sa.Boolean(), nullable=False,
                                      server_default='0'))
    # Runs that ended before this version have nothing left to follow up.
    # (A bound boolean: SQLite takes 1, PostgreSQL only true.)
    run = sa.table('run', sa.column('followed_up', sa.Boolean()))
    op.execute(run.update().values(followed_up=True))
    # Partial indexes, in each dialect's words for the same condition.
    op.create_index('ix_run_follow_up', 'run', ['id'], sqlite_where=sa.text('followed_up = 0'),
                    postgresql_where=sa.text('NOT followed_up'))
    op.create_index('ix_run_retry_of', 'run', ['retry_of'],
                    sqlite_where=sa.text('retry_of IS NOT NULL'),
                    postgresql_where=sa.text('retry_of IS NOT NULL'))
    op.create_index('ux_run_task_tick', 'run', ['task', 'scheduled_for'], unique=True,
                    sqlite_where=sa.text('scheduled_for IS NOT NULL'),
                    postgresql_where=sa.text('scheduled_for IS NOT NULL'))
    op.create_table('task_schedule',
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('last_tick', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.Column('updated_by', sa.String(length=80), nullable=True),
    sa.PrimaryKeyConstraint('task')
    )
    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.DateTime(), nullable=False),
    sa.Column('claimed_until', sa.DateTime(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_delivery_status_next', 'delivery', ['status', 'next_at'])
    op.create_index('ix_delivery_run', 'delivery', ['run_id'])


def downgrade() -> None:
    op.drop_table('delivery')
    op.drop_table('task_schedule')
    op.drop_index('ux_run_task_tick', 'run')
    op.drop_index('ix_run_follow_up', 'run')
    op.drop_index('ix_run_retry_of', 'run')
    with op.batch_alter_table('run', schema=None) as batch_op:
        for column in ('followed_up', 'not_before', 'scheduled_for', 'upstream_run',
                       'retry_of', 'attempt'):
            batch_op.drop_column(column)
