"""a replica's key mark: servers sharing a database must share their secret key

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('replica', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_mark', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('replica', schema=None) as batch_op:
        batch_op.drop_column('key_mark')
