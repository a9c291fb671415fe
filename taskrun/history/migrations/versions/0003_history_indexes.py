"""run: indexes for a task's active runs and for time ranges

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # submit's "is this task already active?" and the per-task counts: without it
    # SQLite walks every run of the task (found by bench/history.py at 1M runs).
    op.create_index("ix_run_status_task", "run", ["status", "task"])
    # "since/until" filters of the Runs page.
    op.create_index("ix_run_queued_at", "run", ["queued_at"])


def downgrade() -> None:
    op.drop_index("ix_run_queued_at", "run")
    op.drop_index("ix_run_status_task", "run")
