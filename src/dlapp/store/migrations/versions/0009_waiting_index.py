"""an index of the waiting apps by queue: the submit path's count and the scheduler's read

A submission counts the apps waiting in its queue (``max_pending_per_queue``, a queue's
``max_pending``) and the scheduler reads, every cycle, which apps wait and with which attempt.
With only ``(state, user)`` both read every waiting app's row: ~1-3 ms a submission and ~25 ms a
cycle at 9,000 waiting. ``(state, queue, seq, attempt)`` answers both from the index alone.

Revision ID: 0009_waiting_index
Revises: 0008_arrays
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009_waiting_index"
down_revision = "0008_arrays"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_apps_state_queue", "apps", ["state", "queue", "seq", "attempt"])


def downgrade() -> None:
    op.drop_index("ix_apps_state_queue", table_name="apps")
